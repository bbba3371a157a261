"""The place a "who did I meet there?" question names ("Who did I meet most recently in the kitchen?" -> "kitchen").

Whom the wearer met in a room is told by the latest memories that name a person (`<face_N>`) and that room, not
by the memories that share the most words with the question: every memory of the room shares "kitchen", and a
memory of the meeting shares no other word with it. So such a question can be shown the latest memories naming a
person there (`qa.latest_k`, `qa.retrieve`), as "where did I leave X?" is shown the latest naming X. Read forms:
"who did I (last) meet / see / talk to / talk with / speak to / speak with (most recently | last) in / at the R".
Among those memories the latest names whom (`qa.who_named`): a tag is copied, not inferred, so the option it names
whole is the answer.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from edge_agent.qa.quote import quoted_options

_MET_IN = re.compile(r"\bwho\s+did\s+i\s+(?:last\s+)?(?:meet|see|talk\s+(?:to|with)|speak\s+(?:to|with))\s+"
                     r"(?:(?:most\s+recently|last|first)\s+)?(?:in|at)\s+(?:the\s+|my\s+)?([a-z][a-z ]*?)\s*"
                     r"(?:\?|$|\s+(?:today|this|yesterday|earlier|most|last)\b)", re.I)


def met_place(question: str) -> str | None:
    """The room or place a "who did I meet there?" question names, lower-cased, or None for any other question."""
    m = _MET_IN.search(question.strip())
    return m.group(1).strip().lower() if m else None


def named_option(options: Sequence[str], memories: list[dict[str, Any]]) -> tuple[int, dict[str, Any]] | None:
    """(the option's index, the memory) for the latest of `memories` that names any option, when it names exactly
    one, as whole words (`qa.quote`'s rule: "<face_1>" is not named by "<face_12>", "Ann" not by "Anna"); None when
    it names several, or none does."""
    found = quoted_options(options, memories)  # each option's latest memory naming it
    if not found:
        return None
    latest = max(found.values(), key=lambda m: (m["t_end"], m["id"]))
    named = [i for i, m in found.items() if m["id"] == latest["id"]]
    return (named[0], latest) if len(named) == 1 else None
