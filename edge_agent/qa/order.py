"""Which of its options the wearer did first or last ("Which of these did I do first?"), told by the times of the
memories most like each option.

Such a question shares no words with the memories it is about, so retrieval by its words shows the reader memories
of other things; and shown the memories of each option, a small reader still does not tell which came first (the
embedded default's was right for 12 of 42 on dev clips, chance about 11: models/default/HISTORY.md, "Which came
first"). Every memory carries its time, so the order is read off the clock instead: each option is matched to the
sentence most like it among the memories nearest it (MiniLM; without an embedder, the memory FTS5 ranks first), and
the option found earliest (or latest) is the answer, cited by its memory. Read forms: "which of these / them / the
following / one did I do first | earliest | last | latest | most recently".
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Sequence

from edge_agent.qa.match import sentences
from edge_agent.qa.retrieve import embedding_ranking
from edge_agent.store import Store

_WHICH = re.compile(r"\bwhich\s+(?:of\s+(?:these|them|the\s+following)|one)\s+did\s+i\s+(?:do\s+)?"
                    r"(first|earliest|last|latest|most\s+recently)\b", re.I)
SAME_DEPTH = 16  # memories read per option: an activity rarely spans more segments than this
SAME_TOLERANCE = 1e-4  # similarities this close (relative: BM25's scale varies) are one text, not a nearer match


def order_asked(question: str) -> str | None:
    """"first" or "last" for a question asking which of its options came first or last; None for any other."""
    m = _WHICH.search(question)
    if not m:
        return None
    return "first" if m.group(1).lower() in ("first", "earliest") else "last"


class Match(NamedTuple):
    """Where an option was found: the memory, which of its sentences (a memory may tell two events, in order), and
    how alike they are."""

    memory: dict[str, Any]
    sentence: int
    similarity: float


def option_matches(store: Store, options: Sequence[str], embedder: Any | None, since: float | None = None,
                   until: float | None = None) -> list[Match | None]:
    """For each option, the sentence in range most like it (MiniLM over the sentences of the SAME_DEPTH memories the
    vector index finds nearest; without an embedder the memory FTS5 ranks first), or None when none matches. Of
    sentences alike (an activity written the same way over several segments), the earliest: when it began."""
    found: list[Match | None] = []
    for text in options:
        ranked = (embedding_ranking(store, text, embedder, SAME_DEPTH, since, until) if embedder is not None
                  else store.fts_search(text, SAME_DEPTH, since=since, until=until))
        # the store filters by time; checked again, as retrieval does: no memory from after `until`
        rows = [r for r in store.get_memories([mid for mid, _ in ranked]) if until is None or r["t_end"] <= until]
        if embedder is None:
            score = dict(ranked)
            matches = [Match(r, 0, score[r["id"]]) for r in rows]
        else:
            units = [(r, j, sent) for r in rows for j, sent in enumerate(sentences(r["text"]))]
            vecs = embedder.encode([text] + [sent for _, _, sent in units])
            matches = [Match(r, j, float(vecs[k + 1] @ vecs[0])) for k, (r, j, _) in enumerate(units)]
        if not matches:
            found.append(None)
            continue
        best = max(m.similarity for m in matches)
        same = [m for m in matches if m.similarity >= best - SAME_TOLERANCE * abs(best)]
        found.append(min(same, key=lambda m: (m.memory["t_start"], m.sentence, m.memory["id"])))
    return found


def ordered_choice(word: str, found: Sequence[Match | None]) -> int | None:
    """Index of the option found earliest ("first") or latest ("last"), by the memory's time, then the sentence's
    place in it; two options on one sentence go to the one more like it. None when no option was found."""
    sign = 1 if word == "first" else -1
    ranked = [(sign * m.memory["t_start"], sign * m.sentence, -m.similarity, i) for i, m in enumerate(found)
              if m is not None]
    return min(ranked)[3] if ranked else None
