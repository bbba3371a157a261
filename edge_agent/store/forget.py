"""`forget`: deletes memories in a time range and everything derived from them, then scrubs the file."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

from edge_agent.store.queries import (
    Queries,
    unlink_all,
)

SCRUB_POLL_S = 0.2
WHAT_ALL_KEEPS = ("segment rows (times and frame counts only, marked 'forgotten', so re-running a file does not "
                  "write them again), streams (the source's name and start time) and adapters (steering vectors: "
                  "numbers, no text; `edge-agent adapter list`)")


def _pending_marker(db_path: os.PathLike) -> Path:
    """A file beside the database saying a forget's scrub could not finish (a reader held old pages)."""
    return Path(f"{os.fspath(db_path)}-scrub-pending")


def _remove_empty_dirs(paths: list[str], levels: int = 2) -> int:
    """rmdir the folders that held removed files, and their parents up to `levels`, when left empty."""
    n = 0
    dirs = {Path(p).parent for p in paths}
    for _ in range(levels):
        parents = set()
        for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            try:
                d.rmdir()
                n += 1
                parents.add(d.parent)
            except OSError:  # not empty, already gone, or not ours: leave it
                pass
        dirs = parents
    return n


class ForgetQueries(Queries):
    # ------------------------------------------------------------------ forget

    def forget(self, since: float | None = None, until: float | None = None, *, everything: bool = False,
               scrub_wait_s: float = 60.0, on_wait: Callable[[str], None] | None = None) -> dict[str, int]:
        """Delete what overlaps [since, until) (absolute seconds; None = unbounded) and what was derived from it.

        Gone: memories (FTS rows and embeddings by trigger / cascade), their links from answers, the
        candidates and kept frames (files too) of the segments in range, and the pairs built from those
        candidates or from feedback on answers that cited a forgotten memory. Segment rows stay, marked
        'forgotten' with no failure text, so re-running the source does not write them again.
        Questions and answers stay (they are the wearer's own words); their citations of forgotten
        memories disappear. `everything=True` (`forget --all`) also deletes every question, answer,
        feedback (and its history), pair and registered face; what stays then is `WHAT_ALL_KEEPS`.

        Then the file is scrubbed (`scrub`): old page images are folded out of the WAL and the file is
        vacuumed. Another process holding a read snapshot keeps those pages alive; forget waits for it up to
        `scrub_wait_s` (calling `on_wait` once with what it waits for) and finishes the moment it lets go.
        Still held then: counts["scrub_pending"] = 1 and the next `Store.open` finishes the scrub.
        """
        cond, params = "", []
        if since is not None:
            cond += " AND {a}t_end > ?"
            params.append(float(since))
        if until is not None:
            cond += " AND {a}t_start < ?"
            params.append(float(until))
        with self._tx() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS _forget_mem (id INTEGER PRIMARY KEY)")
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS _forget_seg (id INTEGER PRIMARY KEY)")
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS _forget_pair (id INTEGER PRIMARY KEY)")
            for t in ("_forget_mem", "_forget_seg", "_forget_pair"):
                conn.execute(f"DELETE FROM temp.{t}")
            conn.execute("INSERT INTO temp._forget_mem SELECT id FROM memories WHERE 1 = 1"
                         + cond.format(a=""), params)
            conn.execute("INSERT OR IGNORE INTO temp._forget_seg SELECT s.id FROM segments s "
                         "JOIN streams st ON st.id = s.stream_id WHERE 1 = 1"
                         + cond.format(a="st.origin + s."), params)
            conn.execute("INSERT OR IGNORE INTO temp._forget_seg SELECT segment_id FROM memories "
                         "WHERE id IN (SELECT id FROM temp._forget_mem)")
            conn.execute(
                "INSERT OR IGNORE INTO temp._forget_pair SELECT id FROM pairs WHERE chosen_candidate_id IN "
                "(SELECT id FROM candidates WHERE segment_id IN (SELECT id FROM temp._forget_seg)) OR "
                "rejected_candidate_id IN (SELECT id FROM candidates WHERE segment_id IN (SELECT id FROM temp._forget_seg))")
            conn.execute(
                "INSERT OR IGNORE INTO temp._forget_pair SELECT pf.pair_id FROM pair_feedback pf "
                "JOIN feedback f ON f.id = pf.feedback_id JOIN answer_citations ac ON ac.answer_id = f.answer_id "
                "WHERE ac.cited = 1 AND ac.memory_id IN (SELECT id FROM temp._forget_mem)")

            def count(sql: str) -> int:
                return int(conn.execute(sql).fetchone()[0])

            counts = {
                "memories": count("SELECT COUNT(*) FROM temp._forget_mem"),
                "embeddings": count("SELECT COUNT(*) FROM memory_embeddings WHERE memory_id IN "
                                    "(SELECT id FROM temp._forget_mem)"),
                "citations": count("SELECT COUNT(*) FROM answer_citations WHERE memory_id IN "
                                   "(SELECT id FROM temp._forget_mem)"),
                "segments": count("SELECT COUNT(*) FROM temp._forget_seg"),
                "candidates": count("SELECT COUNT(*) FROM candidates WHERE segment_id IN "
                                    "(SELECT id FROM temp._forget_seg)"),
                "pairs": count("SELECT COUNT(*) FROM temp._forget_pair"),
            }
            paths = [self._real_path(r[0]) for r in conn.execute(
                "SELECT path FROM kept_frames WHERE segment_id IN (SELECT id FROM temp._forget_seg)")]
            counts["kept_frames"] = len(paths)
            conn.execute("DELETE FROM pairs WHERE id IN (SELECT id FROM temp._forget_pair)")
            conn.execute("DELETE FROM candidates WHERE segment_id IN (SELECT id FROM temp._forget_seg)")
            conn.execute("DELETE FROM kept_frames WHERE segment_id IN (SELECT id FROM temp._forget_seg)")
            conn.execute("DELETE FROM memories WHERE id IN (SELECT id FROM temp._forget_mem)")
            conn.execute("UPDATE segments SET status = 'forgotten', failure = NULL, people = NULL "
                         "WHERE id IN (SELECT id FROM temp._forget_seg)")
            if everything:
                counts["questions"] = count("SELECT COUNT(*) FROM questions")
                counts["answers"] = count("SELECT COUNT(*) FROM answers")
                counts["feedback"] = count("SELECT COUNT(*) FROM feedback")
                counts["pairs"] += count("SELECT COUNT(*) FROM pairs WHERE id NOT IN "
                                         "(SELECT id FROM temp._forget_pair)")
                counts["faces"] = count("SELECT COUNT(*) FROM faces")  # who the wearer met: not kept either
                conn.execute("DELETE FROM faces")
                conn.execute("DELETE FROM pairs")
                conn.execute("DELETE FROM questions")  # answers, citations, feedback, its history: cascade
            # Files last inside the transaction: if one cannot be removed, nothing is forgotten and the
            # error says which file (better than rows gone and pictures left behind).
            counts["frame_files"] = unlink_all(paths)
        counts["frame_folders"] = _remove_empty_dirs(paths)
        if any(counts.get(k) for k in ("memories", "kept_frames", "questions", "candidates", "faces")):
            counts["scrub_pending"] = 0 if self.scrub(wait_s=scrub_wait_s, on_wait=on_wait) else 1
        return counts

    def scrub(self, wait_s: float = 60.0, on_wait: Callable[[str], None] | None = None) -> bool:
        """Fold the WAL into the file and vacuum it, so deleted text survives in neither; True when done.

        A reader in another process pins the old pages: we poll (short busy timeout each time) until it lets
        go or `wait_s` passes. Not done in time: a marker beside the file makes the next open finish it.
        """
        marker = _pending_marker(self.path)
        deadline = time.monotonic() + max(0.0, wait_s)
        told = False
        with self._lock:
            old_timeout = self.conn.execute("PRAGMA busy_timeout").fetchone()[0]
            self.conn.execute(f"PRAGMA busy_timeout = {int(SCRUB_POLL_S * 1000)}")
            try:
                while True:
                    if self._scrub_once():
                        marker.unlink(missing_ok=True)
                        return True
                    if time.monotonic() >= deadline:
                        marker.touch(mode=0o600)
                        return False
                    if not told and on_wait is not None:
                        on_wait("another process is reading the database; the deleted text stays in its "
                                "write-ahead log until it lets go: waiting to scrub it")
                        told = True
                    time.sleep(SCRUB_POLL_S)
            finally:
                self.conn.execute(f"PRAGMA busy_timeout = {int(old_timeout)}")

    def _scrub_once(self) -> bool:
        try:
            busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                return False
            self.conn.execute("VACUUM")
            busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return not busy
        except sqlite3.OperationalError as e:  # SQLITE_BUSY/LOCKED from VACUUM: a reader or writer is active
            if "lock" in str(e) or "busy" in str(e):
                return False
            raise

    def finish_pending_scrub(self) -> bool:
        """At open: finish a scrub an earlier forget could not (without waiting). True if none is left."""
        if not _pending_marker(self.path).exists():
            return True
        try:
            return self.scrub(wait_s=0.0)
        except (sqlite3.Error, OSError):
            return False
