"""Queries on `streams` and `segments`: a stream per source, one committed row per segment (with its memory)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Sequence

from edge_agent.errors import StoreError
from edge_agent.store.queries import (
    Queries,
)
from edge_agent.store.text import clean_text
from edge_agent.types import Segment


class StreamQueries(Queries):
    # ------------------------------------------------------------------ streams and segments

    def get_or_create_stream(self, source: str, fingerprint: str, origin: float, kind: str) -> int:
        """The stream with this fingerprint (re-running a source resumes it), created if new."""
        with self._tx():
            row = self._one("SELECT id FROM streams WHERE fingerprint = ?", (clean_text(fingerprint),))
            if row:
                return int(row["id"])
            return self._insert("streams", {"source": clean_text(str(source)), "fingerprint": clean_text(fingerprint),
                                            "origin": float(origin), "kind": kind, "created_at": time.time()})

    def get_stream(self, stream_id: int) -> dict[str, Any]:
        row = self._one("SELECT * FROM streams WHERE id = ?", (int(stream_id),))
        if row is None:
            raise StoreError(f"stream {stream_id}: no such stream")
        return row

    def streams(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM streams ORDER BY id")

    def latest_origin(self, until: float | None = None) -> float | None:
        """The origin of the newest stream that began at or before `until` (any stream when None): "the
        recording" a question such as "what was I doing 7 minutes into the recording" means."""
        if until is None:
            row = self._one("SELECT origin FROM streams ORDER BY origin DESC, id DESC LIMIT 1")
        else:
            row = self._one("SELECT origin FROM streams WHERE origin <= ? ORDER BY origin DESC, id DESC LIMIT 1",
                            (float(until),))
        return None if row is None else float(row["origin"])

    def last_committed_segment(self, stream_id: int) -> int | None:
        """Highest segment index committed for the stream (written, failed or forgotten), None if none."""
        row = self._one("SELECT MAX(idx) AS i FROM segments WHERE stream_id = ?", (int(stream_id),))
        return None if row is None or row["i"] is None else int(row["i"])

    def commit_segment(self, stream_id: int, segment: Segment, *, memory: str | None, failure: str | None,
                       writer_model: str, adapter_id: str | None, n_tokens: int,
                       latency_s: float, people: Sequence[str] = ()) -> tuple[int, int | None]:
        """Record a segment and its memory (or why none was written) in ONE transaction.

        Exactly one of `memory` / `failure` is given; `people` are the face registry's tags of who was in view.
        Idempotent: if (stream, segment.index) is already committed, its existing ids are returned and nothing
        changes (a resumed run may redo a segment).
        """
        if (memory is None) == (failure is None):
            raise ValueError("commit_segment: give exactly one of memory= and failure=")
        try:
            return self._commit_segment(stream_id, segment, memory=memory, failure=failure,
                                        writer_model=writer_model, adapter_id=adapter_id, n_tokens=n_tokens,
                                        latency_s=latency_s, people=people)
        except sqlite3.OperationalError as e:
            if "full" in str(e):  # SQLITE_FULL: the transaction rolled back whole; earlier segments are intact
                raise StoreError(f"store {str(self.path)!r}: disk full ({e}) at segment {segment.index}; "
                                 f"free space and run again (it resumes after the last committed segment)") from None
            raise

    def _commit_segment(self, stream_id: int, segment: Segment, *, memory: str | None, failure: str | None,
                        writer_model: str, adapter_id: str | None, n_tokens: int,
                        latency_s: float, people: Sequence[str]) -> tuple[int, int | None]:
        with self._tx():
            seg = self._one("SELECT id FROM segments WHERE stream_id = ? AND idx = ?", (int(stream_id), segment.index))
            if seg is not None:
                mem = self._one("SELECT id FROM memories WHERE segment_id = ?", (seg["id"],))
                return int(seg["id"]), (int(mem["id"]) if mem else None)
            stream = self._one("SELECT origin FROM streams WHERE id = ?", (int(stream_id),))
            if stream is None:
                raise StoreError(f"stream {stream_id}: no such stream")
            now = time.time()
            seg_id = self._insert("segments", {
                "stream_id": int(stream_id), "idx": int(segment.index),
                "t_start": float(segment.t_start), "t_end": float(segment.t_end),
                "status": "written" if memory is not None else "failed",
                "failure": None if failure is None else clean_text(failure),
                "n_keyframes": len(segment.keyframes), "frames_seen": segment.frames_seen,
                "frames_merged": segment.frames_merged, "frames_dropped": segment.frames_dropped,
                "writer_model": writer_model, "adapter_id": adapter_id, "n_tokens": int(n_tokens),
                "latency_s": float(latency_s), "created_at": now, "people": " ".join(people) or None,
            })
            mem_id = None
            if memory is not None:
                origin = float(stream["origin"])
                mem_id = self._insert("memories", {
                    "stream_id": int(stream_id), "segment_id": seg_id, "text": clean_text(memory),
                    "t_start": origin + float(segment.t_start), "t_end": origin + float(segment.t_end),
                    "writer_model": writer_model, "adapter_id": adapter_id, "n_tokens": int(n_tokens),
                    "created_at": now,
                })
            return seg_id, mem_id

    def get_segment(self, segment_id: int) -> dict[str, Any]:
        row = self._one("SELECT s.*, st.origin FROM segments s JOIN streams st ON st.id = s.stream_id "
                        "WHERE s.id = ?", (int(segment_id),))
        if row is None:
            raise StoreError(f"segment {segment_id}: no such segment")
        return row

    def segments(self, stream_id: int, *, from_index: int | None = None,
                 to_index: int | None = None) -> list[dict[str, Any]]:
        """Segment rows of a stream ordered by index, optionally with from_index <= idx <= to_index."""
        sql, params = "SELECT * FROM segments WHERE stream_id = ?", [int(stream_id)]
        if from_index is not None:
            sql += " AND idx >= ?"
            params.append(int(from_index))
        if to_index is not None:
            sql += " AND idx <= ?"
            params.append(int(to_index))
        return self._rows(sql + " ORDER BY idx", params)
