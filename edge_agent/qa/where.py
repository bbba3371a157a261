"""The thing a "where did I leave it?" question asks after ("Where did I leave my keys?" -> "keys").

Where a thing is now is told by the latest memory that names it, not by the memory that shares the most words
with the question: every time the wearer picked the keys up or put them down shares those words. So such a
question can be shown the latest memories naming the thing (`qa.latest_k`, `qa.retrieve`). Read forms: "where did
I leave / put / last put / last see / last have X", "where is / are my X" (only "my": "where is the kitchen" asks
where a place is, not where something was left). A place, a time or a clause after the thing ("my keys in the
kitchen", "my phone this morning", "the cup I used") is not part of it: no memory names "keys in the kitchen" as a
phrase.

With `qa.where_from_memory` the place is read off that memory's sentence naming the thing, and is the answer, or
picks the one option it names: the small reader, shown "I put the red keys on the bookshelf in the office.",
answered "on the desk in the office" (models/default/HISTORY.md, "An open place from the memory").
"""

from __future__ import annotations

import re

_LEFT = re.compile(r"\bwhere\s+(?:did\s+i\s+(?:last\s+)?(?:leave|put|see|have)\s+(?:the\s+|my\s+)?|(?:is|are)\s+my\s+)"
                   r"(.+?)\s*(?:\?|$)", re.I)
# where the thing ends: who acted on it, a relative clause, a place or a time said after it
_AFTER_THING = re.compile(r"\s+(?:i|that|which|you|we|in|on|at|by|from|under|near|after|before|when|while|during|this|"
                          r"today|tonight|yesterday|earlier|last)\b.*$", re.I)


def thing_named(words: str) -> str | None:
    """The thing at the start of `words`, lower-cased, cut before what is said after it ("keys I left in the car" ->
    "keys"); None when nothing is left. Shared by the questions that ask about one thing (`qa.colour`)."""
    return _AFTER_THING.sub("", words.strip().lower()) or None


def left_thing(question: str) -> str | None:
    """The thing a question asks where it was left, lower-cased ("blue keys"), or None for any other question."""
    m = _LEFT.search(question.strip())
    return thing_named(m.group(1)) if m else None


def _naming(thing: str) -> re.Pattern:
    """`thing`'s words whole and in order, any case."""
    return re.compile(r"\b" + r"\W+".join(map(re.escape, thing.split())) + r"\b", re.I)


def sentence_naming(text: str, thing: str) -> str:
    """The last sentence of `text` that names `thing` (its words whole and in order, any case): what a memory says of
    where the thing went ("I put the yellow bowl on the table in the kitchen."); the whole text when none does."""
    named = _naming(thing)
    hits = [s.strip() for s in re.findall(r"[^.!?]+[.!?]*", text) if named.search(s)]
    return hits[-1] if hits else text.strip()


def place_after(sentence: str, thing: str) -> str | None:
    """Where a memory's sentence says `thing` went: the words after the last " to " after it ("took the keys from the
    sofa to the desk in the office" -> "the desk in the office"), else after " from " ("picked up the keys from the
    shelf" -> "the shelf"), else all after it ("put the keys on the shelf." -> "on the shelf"); None when nothing is."""
    named = _naming(thing).search(sentence)
    rest = sentence[named.end():].strip().rstrip(".!?").strip() if named else ""
    for word in (" to ", " from "):
        at = (" " + rest).rfind(word)
        if at >= 0:
            rest = (" " + rest)[at + len(word):].strip()
            break
    return rest or None


_PLACE_GLUE = {"on", "in", "at", "the", "a", "an", "to", "from", "into", "onto", "of", "my"}


def _place_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _PLACE_GLUE}


def option_placed(place: str, options: list[str]) -> int | None:
    """The index of the one option whose every word (but "on", "the", ...) the place holds ("on the desk in the
    office" in "the desk in the office"); None when none or several do."""
    words = _place_words(place)
    held = [i for i, o in enumerate(options) if _place_words(o) and _place_words(o) <= words]
    return held[0] if len(held) == 1 else None
