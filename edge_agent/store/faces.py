"""Queries on `faces`: the face registry's people, numbered in the order they were first seen."""

from __future__ import annotations

import time

import numpy as np

from edge_agent.store.queries import Queries


class FaceQueries(Queries):
    # ------------------------------------------------------------------ faces

    def match_face(self, vector: np.ndarray, min_similarity: float, n_frames: int, seen_at: float) -> str:
        """The tag of the registered person closest to `vector` (cosine >= min_similarity; their vector becomes
        the frame-weighted mean), or a new person under the next number. One transaction: a tag once given is
        never given to anyone else."""
        v = np.asarray(vector, np.float32).reshape(-1)
        with self._tx() as conn:
            best, best_sim = None, -1.0
            for fid, tag, blob, n in conn.execute("SELECT id, tag, vector, n_frames FROM faces ORDER BY id"):
                u = np.frombuffer(blob, np.float32)
                if u.shape != v.shape:
                    continue  # a vector of another face network: never the same person
                sim = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-9))
                if sim > best_sim:
                    best, best_sim = (fid, tag, u, n), sim
            if best is not None and best_sim >= min_similarity:
                fid, tag, u, n = best
                mean = ((u * n + v * n_frames) / (n + n_frames)).astype(np.float32)
                conn.execute("UPDATE faces SET vector = ?, n_frames = ?, last_seen = ? WHERE id = ?",
                             (mean.tobytes(), n + n_frames, seen_at, fid))
                return tag
            number = int(conn.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM faces").fetchone()[0])
            tag = f"<face_{number}>"
            conn.execute("INSERT INTO faces (number, tag, vector, n_frames, first_seen, last_seen, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (number, tag, v.tobytes(), n_frames, seen_at, seen_at, time.time()))
            return tag

    def faces(self) -> list[dict]:
        """Every registered person, first met first (without their vectors)."""
        return self._rows("SELECT number, tag, n_frames, first_seen, last_seen FROM faces ORDER BY number")
