"""How often the wearer did something ("How many times did I pick up the red cup?"), told by counting the memories.

A count needs every memory of the event, not the few retrieval shows the reader (`qa.top_k`), and the small reader
miscounts even what it is shown (it answered "not in memory" to "How many times did I walk into the kitchen?" shown
"I walked into the kitchen."; models/default/HISTORY.md, "Counting by the memories"). Every memory is a few sentences
in the past tense, one event each, so the event asked about is matched sentence by sentence over the memories before
the question: "pick up the red cup" -> "picked up the/a red cup". Read forms: "how many times did I <verb> ...?" and
"how many <things> did I <verb>?" ("How many notes did I read?" -> "read a note").

"How many times did I walk into the kitchen?" is also counted by the rooms the memories name, in order: the writer
names the room of nearly every segment (95 % held out) but often writes a segment in the kitchen without "I walked
into the kitchen", and the sentence count came out one short for most such questions on the dev clips (12 of 27
right; by the rooms 24; models/default/HISTORY.md, "Walking into a room").
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from edge_agent.qa.match import sentences
from edge_agent.store import Store

_TIMES = re.compile(r"^\s*how\s+many\s+times\s+did\s+i\s+([a-z]+)\s+(.+?)\s*\??\s*$", re.I)
_THINGS = re.compile(r"^\s*how\s+many\s+([a-z]+)\s+did\s+i\s+([a-z]+)\s*\??\s*$", re.I)
_ARTICLES = ("the", "a", "an", "my", "another")
_ARTICLE = r"(?:the|a|an|my|another)"
_WALK_INTO = re.compile(r"^\s*how\s+many\s+times\s+did\s+i\s+walk\s+into\s+the\s+(.+?)\s*\??\s*$", re.I)
# the rooms of a home a memory may name ("in the kitchen", "into the living room"); the asked room always counts
HOME_ROOMS = ("kitchen", "bedroom", "bathroom", "living room", "dining room", "office", "study", "hallway", "hall",
              "garage", "garden", "laundry room", "basement", "attic", "balcony", "nursery", "guest room", "porch")
# past tenses a memory uses that adding -ed does not give
_IRREGULAR = {"meet": "met", "read": "read", "put": "put", "see": "saw", "take": "took", "go": "went", "get": "got",
              "leave": "left", "find": "found", "eat": "ate", "drink": "drank", "buy": "bought", "make": "made",
              "hold": "held", "give": "gave", "bring": "brought", "sit": "sat", "drop": "dropped", "shut": "shut",
              "write": "wrote", "speak": "spoke", "throw": "threw", "wear": "wore", "run": "ran", "come": "came"}


def past(verb: str) -> str:
    """The simple past a memory writes for `verb` ("pick" -> "picked", "meet" -> "met", "carry" -> "carried")."""
    v = verb.lower()
    if v in _IRREGULAR:
        return _IRREGULAR[v]
    if v.endswith("e"):
        return v + "d"
    if v.endswith("y") and len(v) > 1 and v[-2] not in "aeiou":
        return v[:-1] + "ied"
    return v + "ed"


def singular(noun: str) -> str:
    """"notes" -> "note", "boxes" -> "box", "cherries" -> "cherry"."""
    n = noun.lower()
    if n.endswith("ies"):
        return n[:-3] + "y"
    if n.endswith(("ses", "xes", "ches", "shes")):
        return n[:-2]
    return n[:-1] if n.endswith("s") and not n.endswith("ss") else n


def things_counted(question: str) -> str | None:
    """The things a "how many <things> did I <verb>?" question counts, as asked ("notes"); None for any other
    question (and for "how many times / people ...", which count events and faces, not things)."""
    m = _THINGS.match(question)
    noun = m.group(1).lower() if m else None
    return noun if noun not in (None, "times", "people") else None


def _words_pattern(words: list[str]) -> str:
    """Words in order, whole, any article standing for any other ("the cup" also finds "a cup")."""
    return r"\s+".join(_ARTICLE if w in _ARTICLES else re.escape(w) for w in words)


def counted_event(question: str) -> tuple[re.Pattern, str] | None:
    """(the sentence pattern of the event a "how many ...?" question counts, words every memory telling it holds,
    for the store's full-text search); None for any other question."""
    m = _TIMES.match(question)
    if m:
        rest = m.group(2).lower().split()
        pattern = rf"\b{re.escape(past(m.group(1)))}\s+{_words_pattern(rest)}(?![\w>])"
        return re.compile(pattern, re.I), " ".join(w for w in rest if w not in _ARTICLES)
    m = _THINGS.match(question)
    if m and things_counted(question):
        thing = singular(m.group(1))
        pattern = rf"\b{re.escape(past(m.group(2)))}\s+(?:{_ARTICLE}\s+|one\s+)?{re.escape(thing)}\b"
        return re.compile(pattern, re.I), thing
    return None


def memories_telling(store: Store, question: str, since: float | None,
                     until: float | None) -> list[dict[str, Any]] | None:
    """The memories in range with a sentence telling the event a "how many ...?" question counts, oldest first, each
    with "told": how many of its sentences tell it (a memory of two picks tells two); None for any other question."""
    event = counted_event(question)
    if event is None:
        return None
    pattern, words = event
    found = []
    for m in store.memories(since=since, until=until, search=words or None):
        told = sum(1 for s in sentences(m["text"]) if pattern.search(s))
        if told:
            found.append({**m, "told": told})
    walked = _WALK_INTO.match(question)
    entered = memories_entering(store, walked.group(1).lower(), since, until) if walked else []
    return entered if sum(m["told"] for m in entered) > sum(m["told"] for m in found) else found


def memories_entering(store: Store, room: str, since: float | None, until: float | None) -> list[dict[str, Any]]:
    """The memories in range in which the rooms the memories name, in order, go from another room to `room` (or
    that begin the range saying "into the <room>"), oldest first, each with "told": how many times in it."""
    rooms = "|".join(re.escape(r) for r in sorted({*HOME_ROOMS, room}, key=len, reverse=True))
    named = re.compile(rf"\b(in|into)\s+the\s+({rooms})\b", re.I)
    entered, before = [], None  # before: the last room named so far
    for m in store.memories(since=since, until=until):
        told = 0
        for found in named.finditer(m["text"]):
            now = found.group(2).lower()
            if now == room and (before not in (None, room) or (before is None and found.group(1).lower() == "into")):
                told += 1
            before = now
        if told:
            entered.append({**m, "told": told})
    return entered


# the words an option may give a count in, beside its digits ("twice", "three times")
_NUMBER_WORDS = {1: ("one", "once"), 2: ("two", "twice"), 3: ("three", "thrice"),
                 4: ("four",), 5: ("five",), 6: ("six",), 7: ("seven",), 8: ("eight",), 9: ("nine",), 10: ("ten",)}


def counted_text(question: str, memories: Sequence[dict[str, Any]]) -> str | None:
    """The open answer to a "how many ...?" question: the number of times the memories tell the event, in the
    question's own terms ("3 times", "1 time", "2 notes"); None when no memory tells it (the model answers)."""
    n = sum(m["told"] for m in memories)
    if n == 0:
        return None
    noun = things_counted(question)
    if noun:
        return f"{n} {singular(noun) if n == 1 else noun}"
    return f"{n} time" if n == 1 else f"{n} times"


def counted_option(options: Sequence[str], memories: Sequence[dict[str, Any]]) -> int | None:
    """The index of the option that is the number of times the memories tell the event, when one is; else None
    (no memory tells it, or the count is no option: the model answers)."""
    n = sum(m["told"] for m in memories)
    if n == 0:
        return None
    said = {str(n), *_NUMBER_WORDS.get(n, ())}
    for i, opt in enumerate(options):
        words = re.sub(r"[.!]$", "", opt.strip().lower())
        words = re.sub(r"\s+times?$", "", words)
        if words in said:
            return i
    return None
