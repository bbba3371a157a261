"""The thing a "what colour was it?" question asks the colour of ("What colour was the cup I put on the shelf?" ->
"cup").

A memory that names the thing names its colour beside it ("I put the red cup on the shelf"), but retrieval by the
question's words also brings every memory of the shelf, the kitchen and each other thing put there, each with its
own colour, and a small reader binds the wrong colour to the thing among eight such memories. So such a question
can be shown only the latest memories that name the thing (`qa.colour_k`, `qa.retrieve`). Read forms: "what colour
/ color was / were / is / are the / my X" and "what was / is the colour of the / my X", where X ends before what is
said about it (`qa.where.thing_named`: "I put ...", "that I ...", "on the shelf"): no memory names "cup I put on the
shelf" as a phrase.
"""

from __future__ import annotations

import re

from edge_agent.qa.where import thing_named

_COLOUR_OF = re.compile(r"\bwhat\s+(?:colou?r\s+(?:was|were|is|are)|(?:was|is)\s+the\s+colou?r\s+of)\s+(?:the\s+|my\s+)"
                        r"(.+?)\s*(?:\?|$)", re.I)


def coloured_thing(question: str) -> str | None:
    """The thing a question asks the colour of, lower-cased ("cup"), or None for any other question."""
    m = _COLOUR_OF.search(question.strip())
    return thing_named(m.group(1)) if m else None
