"""Queries on `memories` and their FTS5 index (embeddings and the vector index: store/vectors.py)."""

from __future__ import annotations

from typing import Any, Iterable

from edge_agent.store.queries import (
    MEM_SELECT,
    Queries,
    time_filter,
)
from edge_agent.store.text import match_expression, phrases, search_tokens, tokens

FTS_MATCHES = 5_000  # newest matches BM25-ranked per search (README: FTS5 p50/p95 at 1M memories)


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

    def memories_near(self, t: float, k: int, since: float | None = None,
                      until: float | None = None) -> list[tuple[int, float]]:
        """The k memories closest in time to `t` (seconds on the memories' clock), as (memory_id, distance in
        seconds from t to the memory's span, 0 inside it), closest first, ties by id. Two index walks on t_start,
        one each way from t, so the cost does not grow with the store."""
        if k <= 0:
            return []
        tsql, params = time_filter(since, until)
        found: dict[int, float] = {}
        for cond, order in (("m.t_start <= ?", "DESC"), ("m.t_start > ?", "ASC")):
            for r in self._rows(f"SELECT m.id, m.t_start, m.t_end FROM memories m WHERE {cond}{tsql} "
                                f"ORDER BY m.t_start {order}, m.id LIMIT ?", [float(t), *params, int(k)]):
                found[int(r["id"])] = max(0.0, float(r["t_start"]) - t, t - float(r["t_end"]))
        return sorted(found.items(), key=lambda kv: (kv[1], kv[0]))[:k]

    def latest_naming(self, thing: str, k: int, since: float | None = None,
                      until: float | None = None, also: str | None = None) -> list[tuple[int, float]]:
        """The k latest memories (by t_start) whose text holds `thing` as a phrase (FTS5: its words in that order,
        stemmed), and `also` as another when given, as (memory_id, t_start), latest first, ties by id. Any text
        is safe."""
        wanted = [" ".join(tokens(t)) for t in (thing, also) if t is not None]
        if not all(wanted) or k <= 0:
            return []
        tsql, params = time_filter(since, until)
        with self._lock:
            rows = self.conn.execute(
                "SELECT m.id, m.t_start FROM memories_fts JOIN memories m ON m.id = memories_fts.rowid "
                f"WHERE memories_fts MATCH ?{tsql} ORDER BY m.t_start DESC, m.id DESC LIMIT ?",
                [phrases(wanted, "AND"), *params, int(k)]).fetchall()
        return [(int(i), float(t)) for i, t in rows]

    def fts_search(self, query: str, k: int, since: float | None = None,
                   until: float | None = None) -> list[tuple[int, float]]:
        """Top-k (memory_id, score) by BM25 for any user text; score = -bm25, larger is better.

        The text's words are quoted as FTS5 phrases joined with OR, so quotes, AND/OR/NOT/NEAR, *, :,
        parentheses and broken UTF-8 are all searched as plain words. Bounded by FTS_MATCHES, so its cost
        does not grow with the store: with at most that many matches every one is scored (plain BM25);
        beyond it, words in more memories than that are dropped while rarer words are left (all of their
        matches are scored), and when every word is that frequent only the FTS_MATCHES newest matches in
        range (by id) are scored. Older memories that share only frequent words with the question reach it
        through the vector index.
        """
        toks = search_tokens(query, "OR")
        if not toks or k <= 0:
            return []
        tsql, params = time_filter(since, until)
        scored = ("SELECT m.id AS id, bm25(memories_fts) AS rank FROM memories_fts JOIN memories m "
                  f"ON m.id = memories_fts.rowid WHERE memories_fts MATCH ?{tsql}")
        with self._lock:
            expr = phrases(toks)
            if self._matches(expr) > FTS_MATCHES:
                rare = [t for t in toks if 0 < self._matches(phrases([t])) <= FTS_MATCHES]  # 0: not a rare word
                expr = phrases(rare) if rare else expr
                if not rare:
                    scored += " ORDER BY memories_fts.rowid DESC LIMIT ?"
                    params.append(FTS_MATCHES)
            rows = self.conn.execute(f"SELECT id, rank FROM ({scored}) ORDER BY rank, id LIMIT ?",
                                     [expr, *params, int(k)]).fetchall()
        return [(int(i), -float(rank)) for i, rank in rows]

    def _matches(self, expr: str) -> int:
        """How many memories match `expr`, counted up to FTS_MATCHES + 1 (a rowid walk, nothing scored)."""
        return self.conn.execute("SELECT count(*) FROM (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? "
                                 "LIMIT ?)", (expr, FTS_MATCHES + 1)).fetchone()[0]

    def get_memories(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Memory rows for `ids`, in the order given (ids that do not exist are left out)."""
        marks, vals = self._ids(ids)
        if not vals:
            return []
        by_id = {r["id"]: r for r in self._rows(f"SELECT {MEM_SELECT} FROM memories m WHERE m.id IN ({marks})", vals)}
        return [by_id[i] for i in dict.fromkeys(vals) if i in by_id]
