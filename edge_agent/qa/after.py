"""What the wearer did right after something ("What did I do right after I read the note?"), told by the sentence
that follows that event in the memories (`qa.next_by_memories`, open questions).

Memories are written in order, one event a sentence, so what came next is the next sentence: later in the same memory,
else the first of the next memories that does not go on telling the same thing ("I was talking with <face_1>" over
two segments). The event is found as `qa.order` finds an option (the sentence most like it, MiniLM). The small reader,
writing its own answer, held no shown memory's words in 51 of 52 such open questions on the dev clips
(models/default/HISTORY.md, "Open answers from the memories"). Read forms: "what did I do right / just / immediately
/ straight after I ...?".
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from edge_agent.qa.match import sentences
from edge_agent.qa.order import option_matches
from edge_agent.store import Store

_AFTER = re.compile(r"^\s*what\s+did\s+i\s+do\s+(?:right\s+|just\s+|immediately\s+|straight\s+)?after\s+i\s+(.+?)"
                    r"\s*\??\s*$", re.I)
SAME_EVENT = 0.9  # a later sentence at least this like the event's (cosine, MiniLM) still tells it, not what came next
NEXT_DEPTH = 4  # memories read after the event's for the next thing done


def after_asked(question: str) -> str | None:
    """The event a "what did I do right after I ...?" question names ("read the note"); None for any other."""
    m = _AFTER.match(question)
    return m.group(1) if m else None


def next_sentence(store: Store, event: str, embedder: Any, since: float | None,
                  until: float | None) -> tuple[str, dict[str, Any]] | None:
    """(the first sentence after the one most like `event` that does not tell it again, the memory holding it), or
    None when no sentence is like the event or none follows it in range. "Again": about as like the event's own
    sentence as itself, so an activity written the same way over several segments is passed over."""
    found = option_matches(store, [event], embedder, since, until)[0]
    if found is None:
        return None
    after = [m for m in store.memories(since=found.memory["t_start"], until=until, limit=NEXT_DEPTH + 1)
             if m["id"] != found.memory["id"] and m["t_start"] >= found.memory["t_start"]]
    told = sentences(found.memory["text"])
    units = [(found.memory, s) for s in told[found.sentence + 1:]]
    units += [(m, s) for m in after[:NEXT_DEPTH] for s in sentences(m["text"])]
    if not units:
        return None
    vecs = np.asarray(embedder.encode([told[found.sentence], *(s for _, s in units)]), dtype=np.float32)
    for (memory, sentence), v in zip(units, vecs[1:]):
        if float(v @ vecs[0]) < SAME_EVENT:
            return sentence, memory
    return None
