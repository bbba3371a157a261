"""Multiple choice by likeness: the option most like a sentence of the memories a route found ("what was I doing at
7:07?", "what colour was the cup?"), by MiniLM, instead of by the model.

For these two routes retrieval already finds the memories that hold the answer: the memory of the moment a question
names (`qa.moment_k`: the nearest that time), and the latest memories naming the thing whose colour is asked
(`qa.colour_k`). What is left is to tell which option those memories say, and a sentence-embedding model (MiniLM,
22M parameters, already loaded for retrieval) tells it better than the embedded default's 3.5M-parameter reader,
which ranks options by their likelihood as its answer: on the dev stores activity questions went 115 -> 146 right of
192 and attribute questions 119 -> 138 (held out: 117 -> 148 and 123 -> 143; models/default/HISTORY.md, "Options
matched to the memory"). Where a thing was left and whom the wearer met stay with the model: there likeness was no
better.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

MATCHED_ROUTES = ("moment", "colour")  # qa.retrieve routes whose answer a memory's sentence says outright
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")  # a memory's sentences, each an event ("I met <face_1>. I read a note.")


def sentences(text: str) -> list[str]:
    """A memory's sentences, stripped ("I met <face_1>. I read a note." -> two)."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def matched_memories(memories: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The memories whose sentences the options are matched to: for a moment its own memory, the nearest its time
    (its neighbours are other moments); for a thing's colour all the latest naming it (the last may be another
    thing of that kind). [] when retrieval took no matched route."""
    route = memories[0].get("route") if memories else None
    if route not in MATCHED_ROUTES:
        return []
    return list(memories[:1]) if route == "moment" else list(memories)


def likeliest_option(embedder: Any, options: Sequence[str],
                     memories: Sequence[dict[str, Any]]) -> tuple[int, dict[str, Any]] | None:
    """(index of the option most like any sentence of `memories`, the memory holding that sentence), or None when
    the memories hold no sentence."""
    units = [(m, s) for m in memories for s in sentences(m["text"])]
    if not units:
        return None
    vecs = np.asarray(embedder.encode([*options, *(s for _, s in units)]), dtype=np.float32)
    sims = vecs[len(options):] @ vecs[:len(options)].T  # [sentence, option]
    sentence, option = np.unravel_index(int(np.argmax(sims)), sims.shape)
    return int(option), units[int(sentence)][0]
