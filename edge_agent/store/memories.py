"""Queries on `memories` (with their FTS5 index) and `memory_embeddings`."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from edge_agent.store.queries import (
    MEM_SELECT,
    Queries,
    time_filter,
)
from edge_agent.store.text import match_expression


class MemoryQueries(Queries):
    # ------------------------------------------------------------------ memories

    def recent_memories(self, stream_id: int, before_index: int, k: int) -> list[dict[str, Any]]:
        """Memories of the k segments before `before_index` (idx in [before_index-k, before_index-1]), oldest
        first; rows also carry `segment_index`."""
        return self._rows(
            f"SELECT {MEM_SELECT}, s.idx AS segment_index FROM memories m JOIN segments s ON s.id = m.segment_id "
            "WHERE m.stream_id = ? AND s.idx >= ? AND s.idx < ? ORDER BY s.idx",
            (int(stream_id), int(before_index) - int(k), int(before_index)))

    def memories(self, since: float | None = None, until: float | None = None, search: str | None = None,
                 stream_id: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Memory rows ordered by t_start. `search` keeps memories containing every word of it (any text is safe)."""
        tsql, params = time_filter(since, until)
        sql = f"SELECT {MEM_SELECT} FROM memories m WHERE 1 = 1" + tsql
        if stream_id is not None:
            sql += " AND m.stream_id = ?"
            params.append(int(stream_id))
        if search is not None:
            expr = match_expression(search, "AND")
            if expr is None:
                return []
            sql += " AND m.id IN (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?)"
            params.append(expr)
        sql += " ORDER BY m.t_start, m.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._rows(sql, params)

    def fts_search(self, query: str, k: int, since: float | None = None,
                   until: float | None = None) -> list[tuple[int, float]]:
        """Top-k (memory_id, score) by BM25 for any user text; score = -bm25, larger is better.

        The text's words are quoted as FTS5 phrases joined with OR, so quotes, AND/OR/NOT/NEAR, *, :,
        parentheses and broken UTF-8 are all searched as plain words.
        """
        expr = match_expression(query, "OR")
        if expr is None or k <= 0:
            return []
        tsql, params = time_filter(since, until)
        rows = self._rows(
            "SELECT m.id AS id, bm25(memories_fts) AS rank FROM memories_fts "
            "JOIN memories m ON m.id = memories_fts.rowid "
            f"WHERE memories_fts MATCH ?{tsql} ORDER BY rank, m.id LIMIT ?",
            [expr, *params, int(k)])
        return [(int(r["id"]), -float(r["rank"])) for r in rows]

    def get_memories(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Memory rows for `ids`, in the order given (ids that do not exist are left out)."""
        marks, vals = self._ids(ids)
        if not vals:
            return []
        by_id = {r["id"]: r for r in self._rows(f"SELECT {MEM_SELECT} FROM memories m WHERE m.id IN ({marks})", vals)}
        return [by_id[i] for i in dict.fromkeys(vals) if i in by_id]

    # ------------------------------------------------------------------ embeddings

    def put_embedding(self, memory_id: int, model: str, vector: np.ndarray) -> bool:
        """Store (or replace) a memory's embedding; False if the memory no longer exists (forgotten meanwhile)."""
        return self.put_embeddings(model, [memory_id], np.asarray(vector)[None, :]) == 1

    def put_embeddings(self, model: str, ids: Sequence[int], matrix: np.ndarray) -> int:
        """Store many embeddings in one transaction; returns how many were stored."""
        matrix = np.asarray(matrix, dtype="<f4")
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise ValueError(f"put_embeddings: matrix shape {matrix.shape} does not fit {len(ids)} ids")
        n = 0
        with self._tx() as conn:
            for mid, vec in zip(ids, matrix):
                cur = conn.execute(
                    "INSERT OR REPLACE INTO memory_embeddings (memory_id, model, dim, vector) "
                    "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM memories WHERE id = ?)",
                    (int(mid), model, int(vec.shape[0]), vec.tobytes(), int(mid)))
                n += cur.rowcount
        return n

    def embeddings(self, model: str, since: float | None = None,
                   until: float | None = None) -> tuple[list[int], np.ndarray]:
        """(memory ids, float32 matrix n x dim) of the memories in range that have an embedding of `model`."""
        tsql, params = time_filter(since, until)
        rows = self._rows(
            "SELECT e.memory_id, e.dim, e.vector FROM memory_embeddings e JOIN memories m ON m.id = e.memory_id "
            f"WHERE e.model = ?{tsql} ORDER BY e.memory_id", [model, *params])
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        mat = np.stack([np.frombuffer(r["vector"], dtype="<f4") for r in rows]).astype(np.float32)
        return [int(r["memory_id"]) for r in rows], mat

    def memories_without_embedding(self, model: str, since: float | None = None, until: float | None = None,
                                   limit: int | None = None) -> list[dict[str, Any]]:
        """Memories in range that have no embedding of `model` yet (retrieval embeds them lazily)."""
        tsql, params = time_filter(since, until)
        sql = (f"SELECT {MEM_SELECT} FROM memories m WHERE NOT EXISTS (SELECT 1 FROM memory_embeddings e "
               f"WHERE e.memory_id = m.id AND e.model = ?){tsql} ORDER BY m.id")
        params = [model, *params]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._rows(sql, params)
