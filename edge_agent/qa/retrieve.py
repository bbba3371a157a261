"""Retrieval of memories for a question: FTS5 BM25 ranks and MiniLM cosine ranks fused by reciprocal rank, after
the memories nearest the time the question names, if it names one ("what was I doing at 3 pm?"). Where a question
points at its own answer, settings can show that alone: the moment it names (`qa.moment_k`), the latest memories
naming what it asks where was left (`qa.latest_k`), or the latest naming the thing it asks the colour of
(`qa.colour_k`).

RRF (Cormack et al. 2009): score(m) = sum over rankings r of 1 / (k + rank_r(m)), ranks from 1; a memory
missing from a ranking contributes nothing there. It needs no score calibration between BM25 and cosine.
Memories are embedded lazily, the first time a retrieval covers them, and the vectors are kept in the
store, so each memory goes through the embedder once.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol, Sequence

import numpy as np

from edge_agent.config import QAConfig
from edge_agent.qa.colour import coloured_thing
from edge_agent.qa.when import clock_time, offset_into_recording, time_ago
from edge_agent.qa.where import left_thing
from edge_agent.qa.who import met_place
from edge_agent.store import Store
from edge_agent.store.text import clean_text

EMBED_BATCH = 256  # memories embedded and stored per transaction


class Embedder(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 [n, d]."""
        ...


def candidates_per_ranking(cfg: QAConfig) -> int:
    """How deep each ranking is read before fusion: enough that a memory ranked well by only one still fuses in."""
    return max(4 * cfg.top_k, 50)


def ensure_embeddings(store: Store, embedder: Embedder, since: float | None = None,
                      until: float | None = None) -> int:
    """Embed and store every memory in range that has no vector of `embedder` yet; returns how many."""
    n = 0
    store.maintain_vector_index(embedder.name)  # a no-op once the model's codes are centered
    while True:
        rows = store.memories_without_embedding(embedder.name, since, until, limit=EMBED_BATCH)
        if not rows:
            return n
        vecs = embedder.encode([r["text"] for r in rows])
        store.put_embeddings(embedder.name, [r["id"] for r in rows], vecs)
        n += len(rows)
        if len(rows) < EMBED_BATCH:
            return n


def embedding_ranking(store: Store, question: str, embedder: Embedder, k: int, since: float | None = None,
                      until: float | None = None) -> list[tuple[int, float]]:
    """Top-k (memory_id, cosine) for the question among embedded memories in range.

    Through the store's vector index (sign-bit codes scanned in RAM, the best candidates re-scored exactly
    from the float32 vectors); `exact_ranking` is the full scan it is tested against."""
    ensure_embeddings(store, embedder, since, until)
    q = np.asarray(embedder.encode([question])[0], dtype=np.float32)
    return store.vector_search(embedder.name, q, k, since, until)


def exact_ranking(store: Store, query: np.ndarray, model: str, k: int, since: float | None = None,
                  until: float | None = None) -> list[tuple[int, float]]:
    """Top-k (memory_id, cosine) by a full scan of every stored float32 vector (the reference for the index)."""
    ids, mat = store.embeddings(model, since, until)
    if not ids:
        return []
    sims = np.einsum("ij,j->i", mat, np.asarray(query, dtype=np.float32))  # the same sums as vector_search
    # Stable order: by similarity, then by id so equal scores rank the same way every time.
    order = np.lexsort((np.asarray(ids), -sims))[:k]
    return [(ids[i], float(sims[i])) for i in order]


def recall_at(found: list[tuple[int, float]], exact: list[tuple[int, float]], k: int, tol: float = 1e-6) -> float:
    """Share of the exact top-k that `found`'s top-k matches, counting ties: a found memory whose exact score
    is at least the k-th best exact score (within tol) is as good as the one it displaced."""
    if not exact:
        return 1.0
    exact = exact[:k]
    kth = exact[-1][1]
    good = sum(1 for _, s in found[:k] if s >= kth - tol)
    return min(good, len(exact)) / len(exact)


def fuse(rankings: list[list[int]], rrf_k: int) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of id lists (best first); returns (id, fused score) best first, ties by id."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, mid in enumerate(ranking, start=1):
            scores[mid] = scores.get(mid, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def question_embedder(cfg: QAConfig, embedder: Embedder | None) -> Embedder | None:
    """The embedder retrieval ranks with: `embedder` if given, else MiniLM when cfg.use_embeddings is on and its
    weights are installed; None (FTS5 alone; the runtime warns about it once) otherwise."""
    if not cfg.use_embeddings:
        return None
    if embedder is None:
        from edge_agent.qa.embed import default_embedder, minilm_available

        embedder = default_embedder() if minilm_available() else None
    return embedder


def named_time(store: Store, question: str, asked_at: float) -> float | None:
    """The timestamp a question names (`qa.when`): an offset into the newest recording begun by `asked_at`, a time
    ago, or a clock time; None when it names none."""
    offset = offset_into_recording(question)
    if offset is not None:
        origin = store.latest_origin(asked_at)
        return None if origin is None else origin + offset
    ago = time_ago(question, asked_at)
    return ago if ago is not None else clock_time(question, asked_at)


def retrieve(store: Store, question: str, cfg: QAConfig, since: float | None = None, until: float | None = None,
             embedder: Embedder | None = None, asked_at: float | None = None) -> list[dict[str, Any]]:
    """The cfg.top_k memories most relevant to `question`, best first; each row has an extra "score" (RRF) and
    "route" (which of the settings below found it, or None).

    Only memories with t_end <= until (and t_end > since) are considered: in evaluation `until` is the
    time a question is asked, so the answerer never sees the future. `embedder` defaults to MiniLM when
    cfg.use_embeddings is on and its weights are installed; otherwise FTS5 ranks alone. When the question names
    a time (`qa.when`, read against `asked_at`, else `until`, else now), the half of top_k nearest it come first
    and the text ranks fill the rest: a question about a moment shares no words with the memory of it. With
    cfg.moment_k set, such a question is shown only the moment_k memories nearest that time; with cfg.latest_k
    set, a question where something was left (`qa.where`) only the latest_k memories that name it, if any does,
    and "who did I meet in R?" (`qa.who`) only the latest_k that name a person and R; with cfg.colour_k set, "what
    colour was the X?" (`qa.colour`) only the colour_k latest that name X.
    """
    question = clean_text(question)
    reference = next((t for t in (asked_at, until) if t is not None and math.isfinite(t)), time.time())
    at = named_time(store, question, reference)
    if at is not None and cfg.moment_k:
        # the moment alone: a small reader finds the time it is asked about among 8 memories less often than it
        # reads it off the two or three of that moment (models/default/HISTORY.md, "The moment alone")
        near = [mid for mid, _ in store.memories_near(at, cfg.moment_k, since, until)]
        return _rows(store, fuse([near], cfg.rrf_k), since, until, route="moment")
    route, latest = _latest(store, question, cfg, since, until)
    if latest:
        # where a thing is now, whom I met in a room, or what colour a thing was: the latest memories that name it,
        # not every pick-up and put-down, every memory of the room, or every other thing put in the same place,
        # that shares the question's words (models/default/HISTORY.md, "The latest memory")
        return _rows(store, fuse([[mid for mid, _ in latest]], cfg.rrf_k), since, until, route=route)
    depth = candidates_per_ranking(cfg)
    rankings = [[mid for mid, _ in store.fts_search(question, depth, since=since, until=until)]]
    embedder = question_embedder(cfg, embedder)
    if embedder is not None:
        rankings.append([mid for mid, _ in embedding_ranking(store, question, embedder, depth, since, until)])
    moment = [] if at is None else [mid for mid, _ in store.memories_near(at, (cfg.top_k + 1) // 2, since, until)]
    first = set(moment)
    # the moment's memories first (a question about a moment shares no words with them), then the best by text;
    # the sort is stable, so each group keeps its fused order
    fused = sorted(fuse(rankings + [moment], cfg.rrf_k), key=lambda kv: kv[0] not in first)[: cfg.top_k]
    return _rows(store, fused, since, until)


def _latest(store: Store, question: str, cfg: QAConfig, since: float | None,
            until: float | None) -> tuple[str | None, list[tuple[int, float]]]:
    """(route, memories): "where", the cfg.latest_k latest memories naming what a "where did I leave X?" question
    asks after (`qa.where`); "who", those naming a person (a `<face_N>` tag) and the place a "who did I meet in R?"
    question names (`qa.who`); "colour", the cfg.colour_k latest naming what a "what colour was the X?" question
    asks about (`qa.colour`); (None, []) for other questions, or when the setting is 0."""
    if cfg.latest_k:
        thing = left_thing(question)
        if thing:
            return "where", store.latest_naming(thing, cfg.latest_k, since, until)
        place = met_place(question)
        if place:
            return "who", store.latest_naming(place, cfg.latest_k, since, until, also="face")
    thing = coloured_thing(question) if cfg.colour_k else None
    return ("colour", store.latest_naming(thing, cfg.colour_k, since, until)) if thing else (None, [])


def _rows(store: Store, ranked: list[tuple[int, float]], since: float | None,
          until: float | None, route: str | None = None) -> list[dict[str, Any]]:
    """The memories of (id, score) pairs in that order, each with its "score" and the "route" that found it
    ("moment", "where", "who", "colour"; None: the text ranks)."""
    score = dict(ranked)
    rows = store.get_memories([mid for mid, _ in ranked])
    # The store already filters by time; checked again here because this is the no-future guarantee.
    rows = [r for r in rows if (until is None or r["t_end"] <= until) and (since is None or r["t_end"] > since)]
    for r in rows:
        r["score"], r["route"] = score[r["id"]], route
    return rows
