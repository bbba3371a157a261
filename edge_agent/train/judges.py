"""Judges for the Phase One rewards: who says whether a description is correct, breaks a rule, or is richer.

Both judges take a window (a dict built from the dataset's columns: window_id, prior_memories, caption,
events, and for the endpoint judge the new segment's frames) and the descriptions written for it:

    assess(window, descriptions) -> [Verdict(correct, redundant, overlay)]    one per description
    rank(window, descriptions)   -> indices of the descriptions, best (richest correct) first

- GroundTruthJudge grades against the synthetic world's event log (edge_agent.synth): a description is correct
  when it names at least one thing of the world (a coloured object, a place, a room, a <face_N>, a note's word,
  an activity) and every such thing it names is in the segment's events or caption; it is redundant when
  everything it names was already in the window's prior memories (or it repeats one of their sentences);
  richness ranks by the number of distinct true things named. No network: training runs here.
- EndpointJudge asks any OpenAI-compatible chat endpoint (GPT-4o, Gemini's OpenAI API, a llama.cpp or vLLM
  server) with the new segment's frames as images, caches every reply on disk by the request's hash (a re-run
  costs nothing), retries with exponential backoff and keeps to a request rate.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edge_agent.errors import EdgeAgentError


class JudgeError(EdgeAgentError):
    """A judge endpoint failed for good (after retries) or answered in an unusable form."""


@dataclass(frozen=True)
class Verdict:
    correct: bool
    redundant: bool = False  # repeats a fact already in the window's prior memories
    overlay: bool = False  # describes subtitles, captions or boxes drawn over the video


# --- ground truth ----------------------------------------------------------------------------------------------

_OVERLAY = re.compile(r"(?i)\b(subtitles?|captions?|bounding box(es)?|overlay|on-screen text|watermark|"
                      r"boxes? (drawn|around)|drawn box(es)?|timestamp)\b")
_FACE = re.compile(r"<face_\d+>")


def _vocabulary() -> dict[str, list[str]]:
    """The synthetic world's names, by kind; multi-word names first so "coffee table" wins over "table"."""
    from edge_agent.synth import world as w

    def longest_first(xs):
        return sorted({x.lower() for x in xs}, key=lambda s: (-len(s), s))

    return {
        "thing": longest_first(f"{c} {k}" for c in w.COLOURS for k in w.OBJECT_KINDS),
        "activity": longest_first(w.ACTIVITIES),
        "room": longest_first(w.ROOM_LAYOUTS),
        "place": longest_first(w.PLACE_KINDS),
        "word": longest_first(w.FOODS + w.NAMES + w.WORDS),
    }


_VOCAB: dict[str, list[str]] | None = None


def entities(text: str) -> set[str]:
    """The world's things a text names, as "kind:name" strings (a name inside a longer one counts once)."""
    global _VOCAB
    if _VOCAB is None:
        _VOCAB = _vocabulary()
    found = {f"person:{m}" for m in _FACE.findall(text)}
    rest = " " + _FACE.sub(" ", text.lower()) + " "
    for kind in ("thing", "activity", "room", "place", "word"):
        for name in _VOCAB[kind]:
            pattern = r"(?<![a-z])" + re.escape(name) + r"(?![a-z])"
            if re.search(pattern, rest):
                found.add(f"{kind}:{name}")
                rest = re.sub(pattern, " ", rest)  # "living room" is not also a "room", nor "coffee table" a table
    return found


def _sentences(text: str) -> set[str]:
    return {" ".join(s.lower().split()) for s in re.split(r"[.!?]+", text) if s.strip()}


def _events(window: dict[str, Any]) -> list[dict[str, Any]]:
    ev = window.get("events") or []
    if isinstance(ev, str):
        ev = json.loads(ev) if ev.strip() else []
    return list(ev)


def segment_truth(window: dict[str, Any]) -> set[str]:
    """Everything the segment's events and caption name (the events' own fields included)."""
    truth = entities(window.get("caption") or "")
    for e in _events(window):
        truth |= entities(e.get("description", ""))
        for key in ("room", "from", "to", "place", "from_place", "thing", "person", "text",
                    "activity"):
            if isinstance(e.get(key), str):
                truth |= entities(e[key])
    return truth


class GroundTruthJudge:
    """Grades descriptions against the synthetic world's event log (see module docstring)."""

    name = "ground_truth"

    def assess(self, window: dict[str, Any], descriptions: Sequence[str]) -> list[Verdict]:
        truth = segment_truth(window)
        prior = list(window.get("prior_memories") or [])
        prior_entities: set[str] = set()
        prior_sentences: set[str] = set()
        for m in prior:
            if m:
                prior_entities |= entities(m)
                prior_sentences |= _sentences(m)
        out = []
        for d in descriptions:
            named = entities(d)
            correct = bool(named) and named <= truth
            redundant = (bool(named) and named <= prior_entities) or bool(_sentences(d) & prior_sentences)
            out.append(Verdict(correct, redundant, bool(_OVERLAY.search(d))))
        return out

    def rank(self, window: dict[str, Any], descriptions: Sequence[str]) -> list[int]:
        truth = segment_truth(window)

        def key(i: int):
            named = entities(descriptions[i])
            return (-len(named & truth), len(named - truth), len(descriptions[i].split()), i)

        return sorted(range(len(descriptions)), key=key)


# --- OpenAI-compatible endpoint --------------------------------------------------------------------------------

ASSESS_INSTRUCTIONS = (
    "You grade memories written by a wearable camera's memory writer for one 10-second video segment. "
    "The images are the segment's keyframes. For each numbered description decide: correct (everything it states "
    "is visible in or consistent with the segment), redundant (it only repeats facts already in the earlier "
    "memories listed), overlay (it describes subtitles, captions, timestamps or boxes drawn over the video instead "
    "of the scene). Reply with JSON only: {\"verdicts\": [{\"correct\": true, \"redundant\": false, "
    "\"overlay\": false}, ...]} with one entry per description, in order."
)
RANK_INSTRUCTIONS = (
    "These descriptions of the same 10-second segment of a wearable camera's video are all correct. Rank them "
    "from the richest (most useful facts for answering later questions: objects and where they were put, "
    "people, text read, actions, room) to the poorest. Reply with JSON only: {\"ranking\": [indices, best first]} "
    "using the numbers shown."
)


def _png_data_url(image: Any) -> str:
    import cv2
    import numpy as np

    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
    ok, buf = cv2.imencode(".png", arr[:, :, ::-1])
    if not ok:
        raise JudgeError("could not encode a frame as PNG for the judge")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


class EndpointJudge:
    """An OpenAI-compatible /chat/completions endpoint, with an on-disk cache, retries and a rate limit."""

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, cache_dir: str | Path,
                 max_retries: int = 4, requests_per_minute: float = 60.0, timeout: float = 60.0,
                 backoff_seconds: float = 1.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.max_retries = max_retries
        self.min_interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self.timeout = timeout
        self.backoff = backoff_seconds
        self._lock = threading.Lock()
        self._last_request = 0.0
        self.requests_sent = 0  # HTTP requests actually made (cache hits do not count)
        self.cache_hits = 0

    # -- transport ----------------------------------------------------------------------------------------
    def _wait_turn(self) -> None:
        with self._lock:
            wait = self._last_request + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_request = time.monotonic()

    def _post(self, payload: dict[str, Any]) -> str:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self._wait_turn()
            self.requests_sent += 1
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    reply = json.loads(resp.read().decode())
                return reply["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code < 500 and e.code not in (408, 409, 429):
                    break  # a client error does not get better by asking again
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                last = str(getattr(e, "reason", e))
            except (KeyError, IndexError, TypeError, json.JSONDecodeError):
                last = "reply is not an OpenAI chat completion"
        raise JudgeError(f"judge {self.url} (model {self.model}): {last} after {attempt + 1} attempt(s)")

    def ask(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """One JSON answer for `messages`, from the cache when this exact request was made before."""
        payload = {"model": self.model, "messages": messages, "temperature": 0}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        path = self.cache_dir / f"{key}.json"
        if path.is_file():
            self.cache_hits += 1
            return json.loads(path.read_text(encoding="utf-8"))
        content = self._post(payload)
        parsed = _json_in(content)
        if parsed is None:
            raise JudgeError(f"judge {self.url}: reply is not JSON: {content[:80]!r}")
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(parsed), encoding="utf-8")
        os.replace(tmp, path)
        return parsed

    # -- the judge ------------------------------------------------------------------------------------------
    def _context(self, window: dict[str, Any]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        images = list(window.get("images") or [])
        n_new = int(window.get("n_new_frames") or len(images))
        for img in images[len(images) - n_new:]:
            parts.append({"type": "image_url", "image_url": {"url": _png_data_url(img)}})
        prior = [m for m in (window.get("prior_memories") or []) if m]
        earlier = "\n".join(f"- {m}" for m in prior) or "(none)"
        parts.append({"type": "text", "text": f"Earlier memories:\n{earlier}"})
        return parts

    def assess(self, window: dict[str, Any], descriptions: Sequence[str]) -> list[Verdict]:
        listing = "\n".join(f"{i}. {d}" for i, d in enumerate(descriptions))
        messages = [{"role": "system", "content": ASSESS_INSTRUCTIONS},
                    {"role": "user", "content": self._context(window) + [
                        {"type": "text", "text": f"Descriptions:\n{listing}"}]}]
        reply = self.ask(messages)
        verdicts = reply.get("verdicts") if isinstance(reply, dict) else None
        if not isinstance(verdicts, list) or len(verdicts) != len(descriptions):
            raise JudgeError(f"judge {self.url}: expected {len(descriptions)} verdicts, got {str(reply)[:80]}")
        return [Verdict(bool(v.get("correct")), bool(v.get("redundant")), bool(v.get("overlay"))) for v in verdicts]

    def rank(self, window: dict[str, Any], descriptions: Sequence[str]) -> list[int]:
        listing = "\n".join(f"{i}. {d}" for i, d in enumerate(descriptions))
        messages = [{"role": "system", "content": RANK_INSTRUCTIONS},
                    {"role": "user", "content": self._context(window) + [
                        {"type": "text", "text": f"Descriptions:\n{listing}"}]}]
        reply = self.ask(messages)
        order = reply.get("ranking") if isinstance(reply, dict) else None
        n = len(descriptions)
        if not isinstance(order, list) or sorted(int(i) for i in order) != list(range(n)):
            raise JudgeError(f"judge {self.url}: ranking {str(order)[:80]} is not a permutation of 0..{n - 1}")
        return [int(i) for i in order]


def _json_in(content: str) -> Any:
    """The JSON object in a reply (models sometimes wrap it in ``` fences or a sentence)."""
    try:
        return json.loads(content)
    except (json.JSONDecodeError, TypeError):
        pass
    m = re.search(r"\{.*\}", content or "", re.S)
    if m:
        try:
            return json.loads(m.group(0))
        except json.JSONDecodeError:
            return None
    return None


def make_judge(jcfg, cache_dir: Path):
    """The judge a [judge] config section asks for."""
    if jcfg.kind == "ground_truth":
        return GroundTruthJudge()
    key = os.environ.get(jcfg.api_key_env) if jcfg.api_key_env else None
    return EndpointJudge(jcfg.base_url, jcfg.model, api_key=key, cache_dir=cache_dir, max_retries=jcfg.max_retries,
                         requests_per_minute=jcfg.requests_per_minute, timeout=jcfg.timeout_seconds)
