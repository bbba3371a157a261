"""Queries on `memory_embeddings` and its vector index (`memory_vectors`): a coarse partition of the vectors
(k-means centroids) and one residual sign-bit code per vector, kept in the same SQLite file, searched in RAM
and re-scored exactly from the float32 vectors.

How a search works (store/migrations.py m002 and m006 hold the tables):
  1. Lists. Every vector belongs to the list of its nearest centroid; the query's dot product with each
     centroid orders the lists, and the nearest lists are scanned until `scan_for(n)` memories are covered
     (a million memories: 1/48 of them), so the scan never touches every code.
  2. Estimate. A memory's code holds the sign bits of its residual r = v - centroid and one number,
     scale = |r|^2 / |r|_1; q.v is estimated as q.centroid + scale * sum_d q_d sign(r_d) (the RaBitQ
     estimator without its rotation), through one 256-entry table per code byte. Residuals are far smaller
     than the vectors, so this ranks much better than sign bits of (v - mean): the float32 rows of the best
     VECTOR_RESCORE estimates contain the exact top-k, which a Hamming scan needed thousands of rows for.
  3. Exact. Those rows' float32 vectors are read from `memory_embeddings` and ranked exactly (ties by id).
With no more memories in range than the rows re-scored the search is the exact scan.

The partition is trained (k-means on a sample) once a model has PARTITION_FIRST vectors and again each time
it has grown PARTITION_GROWTH-fold, inside the writing transaction; every code is rewritten then and
`generation` bumped, so readers reload. Between trainings new vectors join their nearest existing list.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edge_agent.store.queries import MEM_SELECT, Queries, time_filter

PARTITION_FIRST = 256  # vectors a model needs before its first partition; below that search is exact anyway
PARTITION_GROWTH = 4  # re-partition when the model has this many times the vectors of the last partition
PARTITION_SAMPLE = 64 * 1024  # vectors k-means trains on (the rest are only assigned to a list)
PARTITION_ITERS = 10
MAX_LISTS = 4096
SCAN_MIN, SCAN_SHARE = 8_000, 48  # codes estimated per search: max(SCAN_MIN, in range / SCAN_SHARE), list by list
VECTOR_RESCORE = 400  # best estimates re-scored exactly from float32 per search (README: recall@8 by size)
RECODE_CHUNK = 20_000  # vectors read back per step while re-coding (bounded RAM at a million memories)


def lists_for(n: int) -> int:
    """How many lists a partition of n vectors gets: 4 sqrt(n), so lists stay small (residuals, and so the
    estimates, stay accurate) until the next partition at 4n. Measured at 1M memories partitioned at 320k
    (README): 566 lists gave recall@8 0.947, 1,131 0.978, 2,000 0.994 with the same scan and re-scoring."""
    return int(min(MAX_LISTS, max(1, round(4 * np.sqrt(n)))))


def scan_for(n: int) -> int:
    """Codes estimated for a search among n memories in range: the true neighbours of a question spread over
    more lists as the store grows (recall@8 at 1M: 0.988 with 16,000 codes, 0.994 with 32,000)."""
    return max(SCAN_MIN, n // SCAN_SHARE)


def sign_bits(matrix: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Binary quantization: the sign bit of every dimension of (vector - center) (center: one vector or one
    per row), packed (np.packbits) and zero-padded to whole 64-bit words; uint8 [n, 8 * ceil(d / 64)]."""
    m = np.asarray(matrix, dtype=np.float32)
    if center is not None:
        m = m - center
    bits = np.packbits(m > 0, axis=1)
    pad = (-bits.shape[1]) % 8
    if pad:
        bits = np.concatenate([bits, np.zeros((bits.shape[0], pad), np.uint8)], axis=1)
    return bits


def nearest_list(matrix: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (L2), int32; in blocks so a big matrix never makes a big product."""
    half = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(matrix.shape[0], np.int32)
    for s in range(0, matrix.shape[0], 4096):
        block = matrix[s:s + 4096]
        # The writer codes one vector a segment: einsum there, as BLAS would wake its spinning thread pool.
        dots = block @ centroids.T if block.shape[0] > 64 else np.einsum("ij,kj->ik", block, centroids)
        out[s:s + 4096] = np.argmax(dots - half, axis=1)
    return out


def encode(matrix: np.ndarray, centroids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(list, residual sign bits, scale) of each row; no centroids = one list centered at zero."""
    m = np.asarray(matrix, dtype=np.float32)
    if centroids is None or centroids.shape[1] != m.shape[1]:
        lists, resid = np.zeros(m.shape[0], np.int32), m
    else:
        lists = nearest_list(m, centroids)
        resid = m - centroids[lists]
    l1 = np.abs(resid).sum(axis=1)
    scale = np.divide(np.einsum("ij,ij->i", resid, resid), l1, out=np.zeros_like(l1), where=l1 > 0)
    return lists, sign_bits(resid), scale.astype(np.float32)


def train_partition(sample: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k centroids by Lloyd's k-means from k distinct sample rows (deterministic for a given sample and seed);
    a list left empty keeps its centroid."""
    x = np.asarray(sample, dtype=np.float32)
    k = min(k, x.shape[0])
    c = x[np.random.default_rng(seed).choice(x.shape[0], k, replace=False)].copy()
    for _ in range(PARTITION_ITERS):
        a = nearest_list(x, c)
        order = np.argsort(a, kind="stable")
        counts = np.bincount(a, minlength=k)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        nonempty = counts > 0
        sums = np.add.reduceat(x[order], starts[nonempty], axis=0)
        c[nonempty] = sums / counts[nonempty, None]
    return c


# _SIGNS[v, j] = +1 or -1: bit j (most significant first, as np.packbits) of the byte value v.
_SIGNS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32) * 2.0 - 1.0


class VectorQueries(Queries):
    # ------------------------------------------------------------------ writing

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
            lists, codes, scales = encode(matrix, self._centroids(conn, model))
            for mid, vec, lst, code, scale in zip(ids, matrix, lists, codes, scales):
                mid = int(mid)
                row = conn.execute("SELECT t_end FROM memories WHERE id = ?", (mid,)).fetchone()
                if row is None:  # forgotten meanwhile
                    continue
                # DELETE first (not INSERT OR REPLACE): a replaced vector must fire the delete triggers, so
                # readers holding the old code in RAM reload it.
                conn.execute("DELETE FROM memory_embeddings WHERE memory_id = ? AND model = ?", (mid, model))
                conn.execute("INSERT INTO memory_embeddings (memory_id, model, dim, vector) VALUES (?, ?, ?, ?)",
                             (mid, model, int(vec.shape[0]), vec.tobytes()))
                conn.execute("INSERT INTO memory_vectors (memory_id, model, t_end, bits, list, scale) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (mid, model, float(row[0]), code.tobytes(), int(lst), float(scale)))
                n += 1
            if n:
                self._advance_watermark(conn, model)
                self._maybe_partition(conn, model)
        return n

    @staticmethod
    def _centroids(conn, model: str) -> np.ndarray | None:
        row = conn.execute("SELECT centroids FROM vector_index_state WHERE model = ?", (model,)).fetchone()
        if row is None or row[0] is None:
            return None
        return _centroid_matrix(row[0], conn.execute(
            "SELECT dim FROM memory_embeddings WHERE model = ? LIMIT 1", (model,)).fetchone())

    @staticmethod
    def _partition_due(conn, model: str) -> bool:
        """Whether `model` has PARTITION_FIRST vectors, or PARTITION_GROWTH times those of its last partition."""
        row = conn.execute("SELECT trained_on FROM vector_index_state WHERE model = ?", (model,)).fetchone()
        due = max(PARTITION_FIRST, PARTITION_GROWTH * (int(row[0]) if row else 0))
        # max(seq) bounds the number of rows from above in O(log n): most calls stop here, without a count.
        if conn.execute("SELECT coalesce(max(seq), 0) FROM memory_vectors").fetchone()[0] < due:
            return False
        return conn.execute("SELECT COUNT(*) FROM memory_vectors WHERE model = ?", (model,)).fetchone()[0] >= due

    @staticmethod
    def _maybe_partition(conn, model: str) -> bool:
        """Train a new partition of `model` and re-code every vector when it is due; True if done. Runs
        inside the caller's write transaction."""
        if not VectorQueries._partition_due(conn, model):
            return False
        ids = np.fromiter((r[0] for r in conn.execute(
            "SELECT memory_id FROM memory_vectors WHERE model = ? ORDER BY memory_id", (model,))), np.int64)
        n = ids.size
        dims = conn.execute("SELECT DISTINCT dim FROM memory_embeddings WHERE model = ?", (model,)).fetchall()
        if len(dims) != 1:
            return False  # mixed dimensions under one name: leave it (search refuses it anyway)
        rng = np.random.default_rng(n)  # the same vectors give the same partition
        sample_ids = np.sort(rng.choice(ids, min(n, PARTITION_SAMPLE), replace=False))
        sample = np.concatenate([_vectors_of(conn, model, sample_ids[s:s + 10_000])
                                 for s in range(0, sample_ids.size, 10_000)])
        centroids = train_partition(sample, lists_for(n), seed=n)
        # Re-code in chunks of RECODE_CHUNK rows: a million float32 vectors would be 1.5 GB at once.
        for s in range(0, n, RECODE_CHUNK):
            chunk = ids[s:s + RECODE_CHUNK]
            lists, codes, scales = encode(_vectors_of(conn, model, chunk), centroids)
            conn.executemany("UPDATE memory_vectors SET list = ?, bits = ?, scale = ? WHERE memory_id = ? "
                             "AND model = ?", [(int(lst), c.tobytes(), float(sc), int(mid), model)
                                               for lst, c, sc, mid in zip(lists, codes, scales, chunk)])
        conn.execute("INSERT OR IGNORE INTO vector_index_state (model) VALUES (?)", (model,))
        conn.execute("UPDATE vector_index_state SET centroids = ?, trained_on = ?, generation = generation + 1 "
                     "WHERE model = ?", (centroids.astype("<f4").tobytes(), n, model))
        return True

    def maintain_vector_index(self, model: str) -> bool:
        """Partition `model` if it is due (a database migrated with many older embeddings); True if done.
        Retrieval calls this before every search: the write lock is taken only when a partition is due."""
        with self._lock:
            if not self._partition_due(self.conn, model):
                return False
        with self._tx() as conn:
            return self._maybe_partition(conn, model)

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

    # ------------------------------------------------------------------ reading

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

    def vector_search(self, model: str, query: np.ndarray, k: int, since: float | None = None,
                      until: float | None = None, rescore: int = VECTOR_RESCORE,
                      scan: int | None = None) -> list[tuple[int, float]]:
        """Top-k (memory_id, cosine) among the memories in range with an embedding of `model` (module doc:
        `scan` (default `scan_for`) codes of the nearest lists estimated, the best max(rescore, k) re-scored
        exactly).
        `query` is L2-normalised like the stored vectors."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if k <= 0:
            return []
        with self._lock:
            index = self._vector_index(model)
            r = max(int(rescore), int(k))
            cand = index.candidates(q, r, scan, since, until)
            if cand.size == 0:
                return []
            rows = _vector_rows(self.conn, model, cand)
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
        """Size of the in-RAM index of `model` (after bringing it up to date)."""
        with self._lock:
            index = self._vector_index(model)
        return {"vectors": index.n, "bytes": index.nbytes, "lists": index.n_lists, "reloads": index.reloads}

    def _vector_index(self, model: str) -> "_CodeIndex":
        """The RAM copy of `model`'s codes, brought up to date with the file (other processes write it too)."""
        caches = self.__dict__.setdefault("_vector_indexes", {})
        index = caches.get(model)
        if index is None:
            index = caches[model] = _CodeIndex()
        # One read snapshot: a re-partition committed between reading the centroids and reading the codes
        # would otherwise append codes of the new lists to the old ones.
        own = not self.conn.in_transaction
        if own:
            self.conn.execute("BEGIN")
        try:
            self._refresh(index, model)
        finally:
            if own:
                self.conn.execute("COMMIT")
        return index

    def _refresh(self, index: "_CodeIndex", model: str) -> None:
        row = self.conn.execute("SELECT generation, centroids FROM vector_index_state WHERE model = ?",
                                (model,)).fetchone()
        generation = int(row[0]) if row else 0
        last = self.conn.execute("SELECT coalesce(max(seq), 0) FROM memory_vectors").fetchone()[0]
        if generation != index.generation or last < index.last_seq:
            dim = self.conn.execute("SELECT dim FROM memory_embeddings WHERE model = ? LIMIT 1", (model,)).fetchone()
            index.reset(generation, None if row is None or row[1] is None else _centroid_matrix(row[1], dim))
        if last > index.last_seq:
            rows = self.conn.execute(
                "SELECT seq, memory_id, t_end, list, scale, bits FROM memory_vectors WHERE model = ? AND seq > ? "
                "ORDER BY seq", (model, index.last_seq)).fetchall()
            index.append(rows, last)


def _centroid_matrix(blob: bytes, dim_row) -> np.ndarray | None:
    """The [lists, dim] float32 centroids stored as one blob (None when the model has no vectors left)."""
    if dim_row is None:
        return None
    flat = np.frombuffer(blob, dtype="<f4")
    return flat.reshape(-1, int(dim_row[0])) if flat.size % int(dim_row[0]) == 0 else None


def _vector_rows(conn, model: str, ids: np.ndarray) -> list:
    """(memory_id, float32 blob) rows of `ids`, one IN query per 10,000 (SQLite's bound-parameter limit)."""
    out = []
    vals = [int(i) for i in ids]
    for s in range(0, len(vals), 10_000):
        part = vals[s:s + 10_000]
        out += conn.execute(f"SELECT memory_id, vector FROM memory_embeddings WHERE model = ? AND memory_id IN "
                            f"({','.join('?' * len(part))})", [model, *part]).fetchall()
    return out


def _vectors_of(conn, model: str, ids: np.ndarray) -> np.ndarray:
    """float32 [len(ids), dim] of `ids` (all must exist), in the order of `ids`."""
    rows = dict(_vector_rows(conn, model, ids))
    return np.frombuffer(b"".join(rows[int(i)] for i in ids), dtype="<f4").reshape(len(ids), -1)


class _CodeIndex:
    """One model's codes in RAM: per memory its id, t_end, list, scale and residual sign bits (48 B for 384
    dimensions; 72 B a memory in all), plus the memories ordered by list so a list is one slice. Rows
    appended since the last ordering (at most 1/16 of them) are found by a pass over their lists."""

    def __init__(self) -> None:
        self.reloads = 0
        self.reset(0)
        self.reloads = 0

    def reset(self, generation: int, centroids: np.ndarray | None = None) -> None:
        self.generation, self.centroids, self.last_seq, self.n = generation, centroids, 0, 0
        self.ids = np.zeros(0, np.int64)
        self.t_end = np.zeros(0, np.float64)
        self.lists = np.zeros(0, np.int32)
        self.scale = np.zeros(0, np.float32)
        self.codes = np.zeros((0, 0), np.uint8)
        self.sizes = np.zeros(self.n_lists, np.int64)
        self.ordered_n, self.order, self.starts = 0, np.zeros(0, np.int32), np.zeros(self.n_lists + 1, np.int64)
        self.reloads += 1

    @property
    def n_lists(self) -> int:
        return 1 if self.centroids is None else int(self.centroids.shape[0])

    @property
    def nbytes(self) -> int:
        n = self.n
        return int(self.ids[:n].nbytes + self.t_end[:n].nbytes + self.lists[:n].nbytes + self.scale[:n].nbytes
                   + self.codes[:n].nbytes + self.order.nbytes)

    def append(self, rows: list, last_seq: int) -> None:
        self.last_seq = max(self.last_seq, int(last_seq))
        if not rows:
            return
        m = len(rows)
        width = len(rows[0][5])
        if any(len(r[5]) != width for r in rows) or (self.n and self.codes.shape[1] != width):
            raise ValueError("vector index: codes of different lengths under one model")
        need = self.n + m
        if need > self.ids.shape[0]:  # grow by doubling: appends are amortised O(1)
            cap = max(need, 2 * self.ids.shape[0], 1024)
            for name in ("ids", "t_end", "lists", "scale"):
                old = getattr(self, name)
                new = np.zeros(cap, old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
            codes = np.zeros((cap, width), np.uint8)
            if self.n:
                codes[: self.n] = self.codes[: self.n]
            self.codes = codes
        lists = np.fromiter((r[3] for r in rows), np.int32, count=m)
        if lists.size and (lists.min() < 0 or lists.max() >= self.n_lists):
            raise ValueError("vector index: a code names a list the partition does not have")
        self.ids[self.n:need] = [r[1] for r in rows]
        self.t_end[self.n:need] = [r[2] for r in rows]
        self.lists[self.n:need] = lists
        self.scale[self.n:need] = [r[4] for r in rows]
        self.codes[self.n:need] = np.frombuffer(b"".join(r[5] for r in rows), np.uint8).reshape(m, width)
        self.sizes += np.bincount(lists, minlength=self.n_lists)
        self.n = need

    def _ordered(self) -> None:
        """Order the memories by list again once the unordered tail outgrows max(4096, n / 16)."""
        if self.n - self.ordered_n <= max(4096, self.n // 16):
            return
        lists = self.lists[: self.n]
        self.order = np.argsort(lists, kind="stable").astype(np.int32)
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=self.n_lists))])
        self.ordered_n = self.n

    def candidates(self, query: np.ndarray, r: int, scan: int | None, since: float | None,
                   until: float | None) -> np.ndarray:
        """Memory ids of (up to) r memories in range with the best estimated dot product with `query`, among
        the `scan` (at least) of the lists nearest it; every memory in range when there are no more than r."""
        n = self.n
        if n == 0:
            return np.zeros(0, np.int64)
        mask = None
        if since is not None or until is not None:
            t = self.t_end[:n]
            mask = np.ones(n, bool)
            if since is not None:
                mask &= t > since
            if until is not None:
                mask &= t <= until
        in_range = n if mask is None else int(np.count_nonzero(mask))
        scan = max(scan_for(in_range) if scan is None else int(scan), r)
        if in_range <= r:
            return self.ids[:n][mask] if mask is not None else self.ids[:n].copy()
        q = query.astype(np.float32)
        centroid_dot = (np.einsum("ij,j->i", self.centroids, q) if self.centroids is not None
                        and self.centroids.shape[1] == q.shape[0] else np.zeros(1, np.float32))
        if in_range <= scan:
            idx = np.flatnonzero(mask) if mask is not None else np.arange(n)
        else:
            idx = self._nearest_lists(centroid_dot, scan, mask)
        # Estimate: q.centroid + scale * sum_d q_d sign(r_d), the sum through one 256-entry table per code
        # byte, looked up one byte column at a time (contiguous, 3x faster than one 2-D gather).
        nbytes = self.codes.shape[1]
        padded = np.zeros(nbytes * 8, np.float32)
        padded[: min(q.shape[0], padded.shape[0])] = q[: padded.shape[0]]
        table = np.einsum("bj,vj->bv", padded.reshape(nbytes, 8), _SIGNS)  # [bytes, 256]
        columns = np.ascontiguousarray(self.codes[idx].T)
        signed, part = np.zeros(idx.size, np.float32), np.empty(idx.size, np.float32)
        for b in range(nbytes):
            np.take(table[b], columns[b], out=part)
            signed += part
        est = centroid_dot[self.lists[idx]] + self.scale[idx] * signed
        if idx.size > r:
            idx = idx[np.argpartition(-est, r - 1)[:r]]
        return self.ids[idx]

    def _nearest_lists(self, centroid_dot: np.ndarray, scan: int, mask: np.ndarray | None) -> np.ndarray:
        """Rows of the lists with the largest centroid dot product, nearest first, until `scan` rows in range."""
        self._ordered()
        n = self.n
        sizes = self.sizes if mask is None else np.bincount(self.lists[:n][mask], minlength=self.n_lists)
        by_dot = np.argsort(-centroid_dot, kind="stable")
        covered = np.cumsum(sizes[by_dot])
        probe = by_dot[: int(np.searchsorted(covered, scan)) + 1]
        parts = [self.order[self.starts[j]:self.starts[j + 1]] for j in probe]
        if self.ordered_n < n:  # rows appended since the last ordering
            tail = np.arange(self.ordered_n, n)
            parts.append(tail[np.isin(self.lists[self.ordered_n:n], probe)])
        idx = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return idx[mask[idx]] if mask is not None else idx
