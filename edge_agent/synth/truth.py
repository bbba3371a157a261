"""What memories hold of the synthetic world's truth: the kinds of fact they name, the objects, and whether the
memories behind a question hold its answer (and, if not, what a writer could have done about it)."""

from __future__ import annotations

import json
import re
from typing import Any

FACT_WORDS = {
    "object": r"\b(cup|mug|bowl|bottle|book|keys|phone|bag|box|plate|remote|glasses|wallet)\b",
    "colour": r"\b(red|blue|green|yellow|orange|purple|white|black|pink|brown|grey|gray)\b",
    "person": r"<face_\d+>",
    "room": r"\b(kitchen|bedroom|office|living room|bathroom|hallway)\b",
    "text": r"\"[^\"]+\"|\bnote\b|\bsign\b",
}


def things(text: str) -> set[tuple[str, str]]:
    """The (colour, kind) objects a memory or caption names, e.g. ("red", "keys")."""
    return set(re.findall(FACT_WORDS["colour"] + " " + FACT_WORDS["object"], text.lower()))


CAUSES = ("holds", "partly", "left out", "misseen", "none")  # see `memory_cause`
ANSWER_WORDS = re.compile(r"<face_\d+>|[a-z0-9]+")
NOT_CONTENT = {"on", "the", "in", "at", "a", "an", "with", "of", "to", "from", "into"}
# "What was I doing at 1:19?" is answered "picking up the purple cup ..."; memories say "I picked up the purple cup".
AS_WRITTEN = {"picking": "picked", "putting": "put", "reading": "read", "moving": "moved", "walking": "walked"}


def answerable(q: dict, said: str) -> bool | None:
    """Do the memories of the question's evidence segments hold its answer: every content word of the true open
    answer (and, for "where did I leave X", the object itself)? None for categories whose evidence spans the day
    (counting, event order), where no few memories decide."""
    if q["category"] in ("counting", "event_order"):
        return None
    words = set(ANSWER_WORDS.findall(said.lower()))
    need = {AS_WRITTEN.get(w, w) for w in ANSWER_WORDS.findall(q["open_answer"].lower())} - NOT_CONTENT
    if q["category"] == "object_location":
        return need <= words and bool(things(q["question"])) and things(q["question"]) <= things(said)
    return bool(need) and need <= words


def memory_cause(q: dict, said: str, truth: str) -> str | None:
    """Why the memories behind a "where did I leave X" or "who did I meet" answer held (or lacked) it, from what
    the evidence segments' memories say (`said`) and their true captions (`truth`):
      holds     they hold the answer (`answerable`)
      partly    they name the object (colour and kind) but not its place (person questions: never)
      left out  they name another object / person the true captions name, not this one
      misseen   they name only objects / people the captions do not
      none      they name no object / person at all
    A steering vector can make the writer say more of what it sees ("left out", "none"); it cannot make it see
    better ("partly", "misseen"). None for the other categories."""
    if q["category"] not in ("object_location", "person"):
        return None
    if answerable(q, said):
        return "holds"
    if q["category"] == "person":
        named, seen = set(re.findall(FACT_WORDS["person"], said)), set(re.findall(FACT_WORDS["person"], truth))
    else:
        if things(q["question"]) <= things(said):
            return "partly"
        named, seen = things(said), things(truth)
    if not named:
        return "none"
    return "left out" if named & seen else "misseen"


def match_questions(clip: dict[str, Any], asked: list[tuple[str, list[str] | str, float]]) -> list[dict | None]:
    """The clip's question (questions.json) behind each question a store recorded, as (text, options, asked_at);
    None where the clip has none. A clip can ask one question twice ("Who did I meet most recently in the
    bedroom?" at 2:54 and again at 3:19, with other answers), so the text and options are matched in the order
    they were asked, not by the text alone."""
    queue: dict[str, list[dict]] = {}
    for q in sorted(clip["questions"], key=lambda q: q["asked_at"]):
        queue.setdefault(question_key(q["question"], q["options"]), []).append(q)
    out: list[dict | None] = [None] * len(asked)
    for i in sorted(range(len(asked)), key=lambda i: (asked[i][2], i)):
        waiting = queue.get(question_key(asked[i][0], asked[i][1]))
        out[i] = waiting.pop(0) if waiting else None
    return out


def question_key(text: str, options: list[str] | str) -> str:
    """The question's text and its options (a list, or the store's JSON column) as one lookup key."""
    return text + json.dumps(json.loads(options) if isinstance(options, str) else options)


def evidence_segments(q: dict, segment_seconds: float) -> range:
    """Indices of the segments the question's evidence interval falls in."""
    first, last = (int(t // segment_seconds) for t in q["evidence"])
    return range(first, last + 1)
