"""Format rules for a memory: JSON {"description": ...}, 1-2 distinct sentences, token cap, people as <face_N>."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

# Constrains decoding (llama.cpp grammar). The length bound is in characters (llama.cpp refuses grammars
# that expand past ~1000 repetitions) and only keeps a runaway
# model from decoding forever; the real cap is in tokens and is checked below.
MEMORY_SCHEMA = {
    "type": "object",
    "properties": {"description": {"type": "string", "minLength": 1, "maxLength": 800}},
    "required": ["description"],
    "additionalProperties": False,
}

_FACE_TAG = re.compile(r"<face_\d+>")
_ANY_TAG = re.compile(r"<[^<>]*>")
# A bare or mangled face reference ("face_3", "<Face 3>", "face 3") that is not the canonical tag.
_LOOSE_FACE = re.compile(r"(?i)(?<!<)\bface[_ ]?\d+\b(?!>)")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
# Replies that describe nothing: the answerer's abstention or the prompt's placeholder for a missing memory. The
# embedded default once wrote "not in memory" for a segment; stored, it would be retrieved and cited like a memory.
_EMPTY_REPLIES = {"not in memory", "not in memories", "none", "nothing", "n a", "unknown"}


@dataclass
class Validation:
    description: str | None  # the memory text when valid
    failure: str | None  # why not, one line, when invalid
    n_tokens: int = 0
    # a description whose one fault is saying its sentence twice: that sentence once, validated (MemoryWriter.write
    # stores it rather than re-asking)
    said_once: Validation | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def _sentences(text: str) -> list[str]:
    """The sentences, compared case-, space- and punctuation-blind ("I sat." and "i sat" are one sentence)."""
    parts = _SENTENCE_END.split(text.strip())
    return [" ".join(re.sub(r"[^\w<>]+", " ", p).lower().split()) for p in parts if p.strip()]


def count_sentences(text: str) -> int:
    ends = len(_SENTENCE_END.findall(text.strip()))
    # A final sentence without a full stop still counts as one.
    trailing = 0 if re.search(r"[.!?]\s*$", text.strip()) else 1
    return ends + trailing


def validate_memory(raw: str, count_tokens: Callable[[str], int], max_tokens: int) -> Validation:
    """Check one model reply against the memory format; never raises for bad model output."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, ValueError):
        return Validation(None, f"not JSON: {raw[:60]!r}")
    if not isinstance(obj, dict) or set(obj) != {"description"}:
        return Validation(None, f'expected exactly {{"description": ...}}, got {raw[:60]!r}')
    text = obj["description"]
    if not isinstance(text, str):
        return Validation(None, f"description is not a string: {text!r:.60}")
    text = " ".join(text.split())
    if not text:
        return Validation(None, "description is empty")
    if " ".join(re.sub(r"[^\w]+", " ", text.lower()).split()) in _EMPTY_REPLIES:
        return Validation(None, f"description says nothing of the segment: {text[:60]!r}")
    n_sentences = count_sentences(text)
    if n_sentences > 2:
        return Validation(None, f"description has {n_sentences} sentences (at most 2)")
    # a small model's greedy decode can say the same sentence twice; the second one carries nothing, so it is
    # invalid as written, and the sentence alone is offered as `said_once`
    sentences = _sentences(text)
    if len(sentences) == 2 and sentences[0] == sentences[1]:
        first = text[:_SENTENCE_END.search(text).end()]
        once = validate_memory(json.dumps({"description": first}), count_tokens, max_tokens)
        return Validation(None, f"description repeats its sentence: {text[:60]!r}", said_once=once if once.ok else None)
    bad_tags = [t for t in _ANY_TAG.findall(text) if not _FACE_TAG.fullmatch(t)]
    if bad_tags:
        return Validation(None, f"tag {bad_tags[0]!r} is not of the form <face_N>")
    loose = _LOOSE_FACE.search(text)
    if loose:
        return Validation(None, f"person written as {loose.group(0)!r}, expected <face_N>")
    n_tokens = count_tokens(text)
    if n_tokens > max_tokens:
        return Validation(None, f"description has {n_tokens} tokens (cap {max_tokens})")
    return Validation(text, None, n_tokens)
