"""Queries on `candidates`, `kept_frames`, `pairs` and `pair_feedback`: what Phase Two trains from."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable

from edge_agent.errors import StoreError
from edge_agent.store.queries import (
    Queries,
    unlink_all,
)
from edge_agent.store.text import clean_text


class CandidateQueries(Queries):
    # ------------------------------------------------------------------ Phase Two: candidates, frames, pairs

    def add_candidate(self, segment_id: int, text: str, *, valid: bool, failure: str | None, sampling: dict,
                      source: str) -> int:
        with self._tx():
            if self._one("SELECT 1 AS x FROM segments WHERE id = ?", (int(segment_id),)) is None:
                raise StoreError(f"segment {segment_id}: no such segment")
            return self._insert("candidates", {
                "segment_id": int(segment_id), "text": clean_text(text), "valid": int(bool(valid)),
                "failure": None if failure is None else clean_text(failure),
                "sampling": json.dumps(sampling or {}, sort_keys=True), "source": source, "created_at": time.time()})

    def candidates(self, *, segment_id: int | None = None, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Candidate rows with their segment's stream, index and absolute times."""
        sql = ("SELECT c.*, s.stream_id, s.idx, st.origin + s.t_start AS t_start, st.origin + s.t_end AS t_end "
               "FROM candidates c JOIN segments s ON s.id = c.segment_id JOIN streams st ON st.id = s.stream_id "
               "WHERE 1 = 1")
        params: list[Any] = []
        if segment_id is not None:
            sql += " AND c.segment_id = ?"
            params.append(int(segment_id))
        if ids is not None:
            marks, vals = self._ids(ids)
            sql += f" AND c.id IN ({marks or 'NULL'})"
            params += vals
        rows = self._rows(sql + " ORDER BY c.id", params)
        for r in rows:
            r["valid"], r["sampling"] = bool(r["valid"]), json.loads(r["sampling"])
        return rows

    def keep_frames(self, segment_id: int, paths: Iterable[str | os.PathLike], expires_at: float) -> list[int]:
        """Record keyframe files kept for training until `expires_at` (absolute seconds).

        Returns [] and records nothing when the segment was forgotten meanwhile (`forget` from another
        process between the segment's commit and this one): the caller then deletes the files."""
        with self._tx():
            seg = self._one("SELECT status FROM segments WHERE id = ?", (int(segment_id),))
            if seg is None:
                raise StoreError(f"segment {segment_id}: no such segment")
            if seg["status"] == "forgotten":
                return []
            now = time.time()
            return [self._insert("kept_frames", {"segment_id": int(segment_id), "path": self._stored_path(p),
                                                 "expires_at": float(expires_at), "created_at": now})
                    for p in paths]

    def _frames_out(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in rows:
            r["path"] = self._real_path(r["path"])
        return rows

    def kept_frames(self, segment_id: int | None = None) -> list[dict[str, Any]]:
        """Kept-frame rows (absolute paths), oldest first; all of them or one segment's."""
        if segment_id is None:
            return self._frames_out(self._rows("SELECT * FROM kept_frames ORDER BY id"))
        return self._frames_out(self._rows("SELECT * FROM kept_frames WHERE segment_id = ? ORDER BY id",
                                           (int(segment_id),)))

    def expired_frames(self, now: float | None = None) -> list[dict[str, Any]]:
        """Kept frames whose time is up (expires_at <= now)."""
        now = time.time() if now is None else float(now)
        return self._frames_out(self._rows("SELECT * FROM kept_frames WHERE expires_at <= ? ORDER BY id", (now,)))

    def expire_kept_frames(self, now: float | None = None) -> int:
        """Delete the kept frames whose time is up, rows and files; returns rows deleted. Cheap when none are
        due (one indexed read, no write lock), so `run` calls it between segments and `Store.open` on open."""
        expired = self.expired_frames(now)
        return self.delete_kept_frames(ids=[r["id"] for r in expired]) if expired else 0

    def delete_kept_frames(self, ids: Iterable[int] | None = None, *, segment_ids: Iterable[int] | None = None,
                           remove_files: bool = True) -> int:
        """Delete kept-frame rows (by id or by segment) and, by default, their files; returns rows deleted."""
        if ids is None and segment_ids is None:
            raise ValueError("delete_kept_frames: give ids= or segment_ids=")
        col, vals = ("id", [int(i) for i in ids]) if ids is not None else \
            ("segment_id", [int(i) for i in segment_ids or []])
        if not vals:
            return 0
        marks = ",".join("?" * len(vals))
        with self._tx() as conn:
            paths = [self._real_path(r[0])
                     for r in conn.execute(f"SELECT path FROM kept_frames WHERE {col} IN ({marks})", vals)]
            n = conn.execute(f"DELETE FROM kept_frames WHERE {col} IN ({marks})", vals).rowcount
            if remove_files:
                unlink_all(paths)
        return n

    def add_pair(self, chosen_candidate_id: int, rejected_candidate_id: int, feedback_ids: Iterable[int],
                 score: float, split: str) -> int:
        """A preference pair over two candidates of the same window, with the feedback that produced it."""
        if split not in ("train", "holdout"):
            raise ValueError(f"add_pair: split={split!r}, expected 'train' or 'holdout'")
        with self._tx():
            pair_id = self._insert("pairs", {
                "chosen_candidate_id": int(chosen_candidate_id), "rejected_candidate_id": int(rejected_candidate_id),
                "score": float(score), "split": split, "created_at": time.time()})
            for fid in dict.fromkeys(int(f) for f in feedback_ids):
                self._insert("pair_feedback", {"pair_id": pair_id, "feedback_id": fid})
            return pair_id

    def pairs(self, split: str | None = None, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Pair rows with feedback_ids, the two texts, their validity and the segment they share."""
        sql = ("SELECT p.*, c.text AS chosen_text, c.valid AS chosen_valid, r.text AS rejected_text, "
               "r.valid AS rejected_valid, c.segment_id AS segment_id, "
               "(SELECT json_group_array(feedback_id) FROM pair_feedback WHERE pair_id = p.id) AS feedback_ids "
               "FROM pairs p JOIN candidates c ON c.id = p.chosen_candidate_id "
               "JOIN candidates r ON r.id = p.rejected_candidate_id WHERE 1 = 1")
        params: list[Any] = []
        if split is not None:
            sql += " AND p.split = ?"
            params.append(split)
        if ids is not None:
            marks, vals = self._ids(ids)
            sql += f" AND p.id IN ({marks or 'NULL'})"
            params += vals
        rows = self._rows(sql + " ORDER BY p.id", params)
        for r in rows:
            r["feedback_ids"] = sorted(json.loads(r["feedback_ids"]))
            r["chosen_valid"], r["rejected_valid"] = bool(r["chosen_valid"]), bool(r["rejected_valid"])
        return rows
