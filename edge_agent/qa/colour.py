"""The thing a "what colour was it?" question asks the colour of ("What colour was the cup I put on the shelf?" ->
"cup").

A memory that names the thing names its colour beside it ("I put the red cup on the shelf"), but retrieval by the
question's words also brings every memory of the shelf, the kitchen and each other thing put there, each with its
own colour, and a small reader binds the wrong colour to the thing among eight such memories. So such a question
can be shown only the latest memories that name the thing (`qa.colour_k`, `qa.retrieve`). Read forms: "what colour
/ color was / were / is / are the / my X" and "what was / is the colour of the / my X", where X ends before what is
said about it (`qa.where.thing_named`: "I put ...", "that I ...", "on the shelf"): no memory names "cup I put on the
shelf" as a phrase.

Asked without options (`qa.colour_by_memory`), the colour is read off those memories: the word before the thing in
the sentence most like the question. The small reader, writing its own answer, said a colour no shown memory held for
26 of 82 open colour questions on the dev clips and none of those was right (models/default/HISTORY.md, "An open
colour from the memory").
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from edge_agent.qa.match import sentences
from edge_agent.qa.where import thing_named

_NOT_A_COLOUR = {"the", "a", "an", "my", "your", "his", "her", "its", "their", "this", "that", "another", "one", "some"}
_COLOUR_OF = re.compile(r"\bwhat\s+(?:colou?r\s+(?:was|were|is|are)|(?:was|is)\s+the\s+colou?r\s+of)\s+(?:the\s+|my\s+)"
                        r"(.+?)\s*(?:\?|$)", re.I)


def coloured_thing(question: str) -> str | None:
    """The thing a question asks the colour of, lower-cased ("cup"), or None for any other question."""
    m = _COLOUR_OF.search(question.strip())
    return thing_named(m.group(1)) if m else None


def colour_said(question: str, memories: Sequence[dict[str, Any]], embedder: Any) -> tuple[str, dict[str, Any]] | None:
    """(the word before the thing a colour question asks about, in the sentence of `memories` naming it that is most
    like the question (MiniLM), the memory holding that sentence); None when no sentence names the thing after a word
    that could be its colour, or for any other question."""
    thing = coloured_thing(question)
    if thing is None:
        return None
    before = re.compile(rf"\b([a-z]+)\s+{re.escape(thing)}\b", re.I)
    units = [(m, s, w.group(1).lower()) for m in memories for s in sentences(m["text"])
             for w in [before.search(s)] if w and w.group(1).lower() not in _NOT_A_COLOUR]
    if not units:
        return None
    vecs = np.asarray(embedder.encode([question, *(s for _, s, _ in units)]), dtype=np.float32)
    best = int(np.argmax(vecs[1:] @ vecs[0]))
    return units[best][2], units[best][0]
