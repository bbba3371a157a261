"""Multiple choice about words the wearer saw ("What did the note at the fridge say?"): answered only by an option a
memory quotes, else "not in memory" (`qa.quoted_text`).

Such an answer is words, and words are either in a memory or not: a memory that says the note read "WIFI TREE33"
does not support "WIFI TREE65", however alike they look. Without this rule a reader that finds no option in its
memories still picks the likeliest letter. The embedded default's writer cannot make out a note's words at its 128-px
frames (none of the 133 texts it wrote for the notes of the dev clips' questions was the note's), and its reader,
choosing among options no memory held, was right as often as chance (models/default/HISTORY.md, "Words no memory
quotes")."""

from __future__ import annotations

import re
from typing import Any, Sequence

_WORDS_ASKED = re.compile(r"\bwhat\s+(?:did\s+(?:the|that|this|a|it)\b[^?]*?\b(?:say|read)|was\s+written)\b", re.I)
_WORD = re.compile(r"[^\W_]+")


def words_asked(question: str) -> bool:
    """Whether `question` asks for the words something said ("What did the note at the door say?", "What was
    written on the whiteboard?")."""
    return bool(_WORDS_ASKED.search(question))


def _words(text: str) -> str:
    """`text` as its lower-case words, each with a space either side, so a match is whole words in order."""
    return " " + " ".join(_WORD.findall(text.lower())) + " "


def quoted_options(options: Sequence[str], memories: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """For each option whose words a memory holds, whole and in order, the latest such memory, by option index.
    Case and punctuation do not count ("PIN 4821" is quoted by 'it said "pin 4821".'); a part of a word or number
    does not ("ROOM 2" is not quoted by "ROOM 229")."""
    found: dict[int, dict[str, Any]] = {}
    latest_first = sorted(memories, key=lambda m: (m["t_end"], m["id"]), reverse=True)
    for i, option in enumerate(options):
        words = _words(option)
        holding = next((m for m in latest_first if words in _words(m["text"])), None) if words.strip() else None
        if holding is not None:
            found[i] = holding
    return found
