"""`forget`: deletes memories in a time range and everything derived from them, then scrubs the file."""

from __future__ import annotations

from edge_agent.store.queries import (
    Queries,
    unlink_all,
)


class ForgetQueries(Queries):
    # ------------------------------------------------------------------ forget

    def forget(self, since: float | None = None, until: float | None = None) -> dict[str, int]:
        """Delete what overlaps [since, until) (absolute seconds; None = unbounded) and what was derived from it.

        Gone: memories (FTS rows and embeddings by trigger / cascade), their links from answers, the
        candidates and kept frames (files too) of the segments in range, and the pairs built from those
        candidates or from feedback on answers that cited a forgotten memory. Segment rows stay, marked
        'forgotten' with no failure text, so re-running the source does not write them again.
        Questions and answers stay (they are the wearer's own words); their citations of forgotten
        memories disappear.
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
            paths = [r[0] for r in conn.execute(
                "SELECT path FROM kept_frames WHERE segment_id IN (SELECT id FROM temp._forget_seg)")]
            counts["kept_frames"] = len(paths)
            conn.execute("DELETE FROM pairs WHERE id IN (SELECT id FROM temp._forget_pair)")
            conn.execute("DELETE FROM candidates WHERE segment_id IN (SELECT id FROM temp._forget_seg)")
            conn.execute("DELETE FROM kept_frames WHERE segment_id IN (SELECT id FROM temp._forget_seg)")
            conn.execute("DELETE FROM memories WHERE id IN (SELECT id FROM temp._forget_mem)")
            conn.execute("UPDATE segments SET status = 'forgotten', failure = NULL "
                         "WHERE id IN (SELECT id FROM temp._forget_seg)")
            # Files last inside the transaction: if one cannot be removed, nothing is forgotten and the
            # error says which file (better than rows gone and pictures left behind).
            counts["frame_files"] = unlink_all(paths)
        if counts["memories"] or counts["kept_frames"]:
            # Old page images stay in the -wal until a checkpoint; fold them in now (best effort:
            # a reader in another process may keep part of the log alive until its next checkpoint).
            with self._lock:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return counts
