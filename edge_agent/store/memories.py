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


CENTER_AFTER = 256  # vectors a model needs before its center (mean) is fixed; below that search is exact anyway
VECTOR_RESCORE = 1000  # candidates re-scored exactly from float32 per search (README: recall@8 by size)
HAMMING_FACTOR = 8  # Hamming candidates per exactly re-scored one (re-ranked by the asymmetric distance)


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
        """Store many embeddings (and their index codes) in one transaction; returns how many were stored."""
        matrix = np.asarray(matrix, dtype="<f4")
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise ValueError(f"put_embeddings: matrix shape {matrix.shape} does not fit {len(ids)} ids")
        n = 0
        with self._tx() as conn:
            codes = sign_bits(matrix, self._vector_center(conn, model))
            for mid, vec, code in zip(ids, matrix, codes):
                mid = int(mid)
                row = conn.execute("SELECT t_end FROM memories WHERE id = ?", (mid,)).fetchone()
                if row is None:  # forgotten meanwhile
                    continue
                # DELETE first (not INSERT OR REPLACE): a replaced vector must fire the delete triggers, so
                # readers holding the old code in RAM reload it.
                conn.execute("DELETE FROM memory_embeddings WHERE memory_id = ? AND model = ?", (mid, model))
                conn.execute("INSERT INTO memory_embeddings (memory_id, model, dim, vector) VALUES (?, ?, ?, ?)",
                             (mid, model, int(vec.shape[0]), vec.tobytes()))
                conn.execute("INSERT INTO memory_vectors (memory_id, model, t_end, bits) VALUES (?, ?, ?, ?)",
                             (mid, model, float(row[0]), code.tobytes()))
                n += 1
            if n:
                self._advance_watermark(conn, model)
                self._maybe_center(conn, model)
        return n

    @staticmethod
    def _vector_center(conn, model: str) -> np.ndarray | None:
        row = conn.execute("SELECT center FROM vector_index_state WHERE model = ?", (model,)).fetchone()
        return None if row is None or row[0] is None else np.frombuffer(row[0], dtype="<f4")

    @staticmethod
    def _maybe_center(conn, model: str) -> bool:
        """Once a model has CENTER_AFTER vectors and no center: set it to their mean and re-code every row.

        The center never moves after that (codes written with it stay comparable), so this runs once per
        model; it bumps `generation`, so readers reload their codes."""
        if MemoryQueries._vector_center(conn, model) is not None:
            return False
        n = conn.execute("SELECT COUNT(*) FROM memory_embeddings WHERE model = ?", (model,)).fetchone()[0]
        if n < CENTER_AFTER:
            return False
        rows = conn.execute("SELECT memory_id, vector FROM memory_embeddings WHERE model = ?", (model,)).fetchall()
        if len({len(r[1]) for r in rows}) != 1:
            return False  # mixed dimensions under one name: leave it uncentered (search refuses it anyway)
        mat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        center = mat.mean(axis=0, dtype=np.float64).astype("<f4")
        codes = sign_bits(mat, center)
        conn.execute("INSERT OR IGNORE INTO vector_index_state (model) VALUES (?)", (model,))
        conn.execute("UPDATE vector_index_state SET center = ?, generation = generation + 1 WHERE model = ?",
                     (center.tobytes(), model))
        conn.executemany("UPDATE memory_vectors SET bits = ? WHERE memory_id = ? AND model = ?",
                         [(c.tobytes(), int(r[0]), model) for r, c in zip(rows, codes)])
        return True

    def maintain_vector_index(self, model: str) -> bool:
        """Center `model`'s codes if it is due (a database migrated with many old embeddings); True if done."""
        row = self._one("SELECT center FROM vector_index_state WHERE model = ?", (model,))
        if row is not None and row["center"] is not None:
            return False
        with self._tx() as conn:
            return self._maybe_center(conn, model)

    @staticmethod
    def _advance_watermark(conn, model: str) -> None:
        """Move the model's watermark up to just below the first memory above it that has no vector.

        Scans only the memories above the old watermark; while memories are embedded as they are written
        (the runtime does) that is the few new ones."""
        conn.execute("INSERT OR IGNORE INTO vector_index_state (model) VALUES (?)", (model,))
        w = int(conn.execute("SELECT watermark FROM vector_index_state WHERE model = ?", (model,)).fetchone()[0])
        gap = conn.execute(
            "SELECT min(m.id) FROM memories m WHERE m.id > ? AND NOT EXISTS (SELECT 1 FROM memory_vectors v "
            "WHERE v.memory_id = m.id AND v.model = ?)", (w, model)).fetchone()[0]
        new = int(gap) - 1 if gap is not None else int(conn.execute(
            "SELECT coalesce(max(id), 0) FROM memories").fetchone()[0])
        if new > w:
            conn.execute("UPDATE vector_index_state SET watermark = ? WHERE model = ?", (new, model))

    def embedding_watermark(self, model: str) -> int:
        """Every memory with an id up to this one has a vector of `model` (0 when nothing is known)."""
        row = self._one("SELECT watermark FROM vector_index_state WHERE model = ?", (model,))
        return int(row["watermark"]) if row else 0

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
        """Memories in range that have no embedding of `model` yet (retrieval embeds them lazily).

        Only memories above the model's watermark are looked at (all below it have one), so on a store of
        a million memories this costs the new ones, not a scan."""
        tsql, params = time_filter(since, until)
        sql = (f"SELECT {MEM_SELECT} FROM memories m WHERE m.id > ? AND NOT EXISTS (SELECT 1 FROM memory_vectors v "
               f"WHERE v.memory_id = m.id AND v.model = ?){tsql} ORDER BY m.id")
        params = [self.embedding_watermark(model), model, *params]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._rows(sql, params)

    # ------------------------------------------------------------------ vector index

    def vector_search(self, model: str, query: np.ndarray, k: int, since: float | None = None,
                      until: float | None = None, rescore: int = VECTOR_RESCORE) -> list[tuple[int, float]]:
        """Top-k (memory_id, cosine) among the memories in range with an embedding of `model`.

        Three stages: the Hamming distance between sign-bit codes of (vector - center) (kept in RAM, 48 bytes
        a memory for 384 dimensions) picks HAMMING_FACTOR x r candidates, r = max(rescore, k); the float query
        against their +-1 codes (asymmetric distance, more accurate than Hamming) keeps r; their float32
        vectors are read from memory_embeddings and ranked exactly (ties by id). With no more memories in
        range than r this is the exact scan.
        `query` is L2-normalised like the stored vectors."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if k <= 0:
            return []
        with self._lock:
            index = self._vector_index(model)
            r = max(int(rescore), int(k))
            cand = index.candidates(q, sign_bits(q[None, :], index.center)[0], r, HAMMING_FACTOR * r, since, until)
            if cand.size == 0:
                return []
            marks, vals = self._ids(cand.tolist())
            rows = self.conn.execute(
                f"SELECT memory_id, vector FROM memory_embeddings WHERE model = ? AND memory_id IN ({marks})",
                [model, *vals]).fetchall()
        if not rows:
            return []
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        mat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        if mat.shape[1] != q.shape[0]:
            raise ValueError(f"vector_search: query has {q.shape[0]} dimensions, {model!r} vectors {mat.shape[1]}")
        sims = np.einsum("ij,j->i", mat, q)  # not BLAS: a gemv here would wake its spinning thread pool
        order = np.lexsort((ids, -sims))[:k]
        return [(int(ids[i]), float(sims[i])) for i in order]

    def vector_index_stats(self, model: str) -> dict[str, Any]:
        """Size of the in-RAM code index of `model` (after bringing it up to date)."""
        with self._lock:
            index = self._vector_index(model)
        return {"vectors": index.n, "bytes": index.nbytes, "reloads": index.reloads}

    def _vector_index(self, model: str) -> "_CodeIndex":
        """The RAM copy of `model`'s codes, brought up to date with the file (other processes write it too)."""
        caches = self.__dict__.setdefault("_vector_indexes", {})
        index = caches.get(model)
        if index is None:
            index = caches[model] = _CodeIndex()
        row = self.conn.execute("SELECT generation, center FROM vector_index_state WHERE model = ?",
                                (model,)).fetchone()
        generation = int(row[0]) if row else 0
        last = self.conn.execute("SELECT coalesce(max(seq), 0) FROM memory_vectors").fetchone()[0]
        if generation != index.generation or last < index.last_seq:
            index.reset(generation, None if row is None or row[1] is None else np.frombuffer(row[1], dtype="<f4"))
        if last > index.last_seq:
            rows = self.conn.execute(
                "SELECT seq, memory_id, t_end, bits FROM memory_vectors WHERE model = ? AND seq > ? ORDER BY seq",
                (model, index.last_seq)).fetchall()
            index.append(rows, last)
        return index



def sign_bits(matrix: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Binary quantization: the sign bit of every dimension of (vector - center), packed (np.packbits) and
    zero-padded to whole 64-bit words; uint8 [n, 8 * ceil(d / 64)]. The packing of migration m002."""
    m = np.asarray(matrix, dtype=np.float32)
    if center is not None and center.shape[0] == m.shape[1]:
        m = m - center
    bits = np.packbits(m > 0, axis=1)
    pad = (-bits.shape[1]) % 8
    if pad:
        bits = np.concatenate([bits, np.zeros((bits.shape[0], pad), np.uint8)], axis=1)
    return bits


_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)
# _BYTE_BITS[v, j] = bit j (most significant first, as np.packbits) of the byte value v.
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)


def _popcount(words: np.ndarray, out: np.ndarray) -> None:
    """Set bits of each uint64 into `out` (uint8); numpy >= 2 has it built in, older numpy uses a byte table."""
    if hasattr(np, "bitwise_count"):
        np.bitwise_count(words, out=out)
    else:
        out[:] = _POP8[words.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.uint8)


class _CodeIndex:
    """Sign-bit codes of one model in RAM, one column per memory word-major ([words, n] uint64), so the
    Hamming scan is a few vectorised passes over contiguous arrays (about 10 ms per million on one core)."""

    def __init__(self) -> None:
        self.reloads = 0
        self.reset(0)
        self.reloads = 0

    def reset(self, generation: int, center: np.ndarray | None = None) -> None:
        self.generation, self.center, self.last_seq, self.n = generation, center, 0, 0
        self.ids = np.zeros(0, np.int64)
        self.t_end = np.zeros(0, np.float64)
        self.words = np.zeros((0, 0), np.uint64)
        self.reloads += 1

    @property
    def nbytes(self) -> int:
        return int(self.ids[: self.n].nbytes + self.t_end[: self.n].nbytes + self.words[:, : self.n].nbytes)

    def append(self, rows: list, last_seq: int) -> None:
        self.last_seq = max(self.last_seq, int(last_seq))
        if not rows:
            return
        m = len(rows)
        width = len(rows[0][3])
        if any(len(r[3]) != width for r in rows) or (self.n and self.words.shape[0] * 8 != width):
            raise ValueError("vector index: codes of different lengths under one model")
        codes = np.frombuffer(b"".join(r[3] for r in rows), dtype="<u8").reshape(m, width // 8).T
        need = self.n + m
        if need > self.ids.shape[0]:  # grow by doubling: appends are amortised O(1)
            cap = max(need, 2 * self.ids.shape[0], 1024)
            ids, t_end, words = np.zeros(cap, np.int64), np.zeros(cap, np.float64), np.zeros((width // 8, cap), np.uint64)
            if self.n:
                ids[: self.n], t_end[: self.n] = self.ids[: self.n], self.t_end[: self.n]
                words[:, : self.n] = self.words[:, : self.n]
            self.ids, self.t_end, self.words = ids, t_end, words
        self.ids[self.n:need] = [r[1] for r in rows]
        self.t_end[self.n:need] = [r[2] for r in rows]
        self.words[:, self.n:need] = codes
        self.n = need

    def candidates(self, query: np.ndarray, code: np.ndarray, r: int, h: int, since: float | None,
                   until: float | None) -> np.ndarray:
        """Memory ids of (up to) r codes nearest the query among those in range: the h nearest by Hamming
        distance to `code`, then the r best by the float query's dot product with their +-1 codes."""
        n = self.n
        if n == 0:
            return np.zeros(0, np.int64)
        q = np.frombuffer(np.ascontiguousarray(code).tobytes(), dtype="<u8")
        dist = np.zeros(n, np.uint16)
        buf = np.empty(n, np.uint64)
        cnt = np.empty(n, np.uint8)
        for w in range(self.words.shape[0]):
            np.bitwise_xor(self.words[w, :n], q[w], out=buf)
            _popcount(buf, cnt)
            np.add(dist, cnt, out=dist)
        far = np.uint16(self.words.shape[0] * 64 + 1)  # farther than any code: out of range
        if since is not None:
            dist[self.t_end[:n] <= since] = far
        if until is not None:
            dist[self.t_end[:n] > until] = far
        in_range = None
        if r >= n or h >= n:
            keep = np.flatnonzero(dist < far)
            in_range = keep.size
        else:
            # The h-th smallest distance from a histogram (distances are small integers): cheaper than a sort.
            hist = np.bincount(dist, minlength=int(far) + 1)
            cut = int(np.searchsorted(np.cumsum(hist), h))
            cut = min(cut, int(far) - 1)
            below = np.flatnonzero(dist < cut)
            at = np.flatnonzero(dist == cut)[: max(h - below.size, 0)]
            keep = np.concatenate([below, at])
        if keep.size > r and not (in_range is not None and in_range <= r):
            # Asymmetric re-rank: the float query against the candidates' +-1 codes, sum_d cq_d * (2 b_d - 1),
            # through one 256-entry table per code byte (no BLAS: its threads spin on a busy device).
            cq = query.astype(np.float32) - (self.center if self.center is not None else 0.0)
            nbytes = self.words.shape[0] * 8
            padded = np.zeros(nbytes * 8, np.float32)
            padded[: cq.shape[0]] = cq
            table = (_BYTE_BITS[None, :, :] * padded.reshape(nbytes, 1, 8)).sum(axis=2)  # [bytes, 256]
            codes = np.ascontiguousarray(self.words[:, keep].T).view(np.uint8)  # [m, bytes], packbits order
            score = table[np.arange(nbytes)[None, :], codes].sum(axis=1)  # = (asymmetric dot + sum cq) / 2
            keep = keep[np.argpartition(-score, r - 1)[:r]]
        return self.ids[keep]
