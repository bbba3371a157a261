"""The memory store: one SQLite file (WAL) shared by the runner, `ask`, `adapt` and `eval` processes.

Every write is one BEGIN IMMEDIATE transaction: the write lock is taken up front, so a writer never fails
half-way with "database is locked" when another process committed in between; other processes wait up to
`busy_timeout` for it. Rows come back as plain dicts. Times: segments in stream seconds, everything else
in absolute seconds (stream origin + stream seconds).

Time filters (`since`, `until`) select memories that end after `since` and end no later than `until`
(`t_end > since`, `t_end <= until`): a question asked at `until` never sees a memory that is not finished
by then. `forget` deletes everything that overlaps the range instead (`t_end > since`, `t_start < until`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import sqlite_utils

from edge_agent.errors import StoreError
from edge_agent.store import migrations
from edge_agent.store.text import clean_text, match_expression
from edge_agent.types import Segment

BUSY_TIMEOUT_S = 30.0
ADAPTER_STATUSES = ("candidate", "active", "inactive", "rejected", "rolled_back")
_ADAPTER_COLUMNS = ("id", "status", "reason", "path", "gguf_path", "layer", "scale", "hidden_size",
                    "base_model_hash", "pair_ids", "feedback_ids", "metrics", "extra", "previous_id",
                    "created_at", "activated_at")
_ADAPTER_JSON = {"pair_ids": [], "feedback_ids": [], "metrics": {}}
MEMORY_COLUMNS = ("id", "stream_id", "segment_id", "text", "t_start", "t_end", "writer_model", "adapter_id",
                  "n_tokens", "created_at")
_MEM_SELECT = ", ".join(f"m.{c}" for c in MEMORY_COLUMNS)


def _time_filter(since: float | None, until: float | None, alias: str = "m") -> tuple[str, list[Any]]:
    """SQL conditions (joined with AND, leading ' AND ') selecting memories by the module's time rule."""
    sql, params = "", []
    if since is not None:
        sql += f" AND {alias}.t_end > ?"
        params.append(float(since))
    if until is not None:
        sql += f" AND {alias}.t_end <= ?"
        params.append(float(until))
    return sql, params


def _owner_only(path: Path) -> None:
    """chmod 0600 a file we own that is readable by others (the db and its -wal/-shm)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600)


class Store:
    """Open with `Store.open(path)`; use as a context manager or call `close()`."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn
        self.db = sqlite_utils.Database(conn)  # table helpers for inserts and schema introspection
        self._lock = threading.RLock()  # the connection may be shared by a capture thread and the main thread

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike, *, busy_timeout: float = BUSY_TIMEOUT_S) -> "Store":
        """Open (creating if needed) the database at `path` and bring its schema up to date.

        The parent folder is created 0700, the file and its -wal/-shm 0600. Raises StoreError (one line)
        when the folder cannot be created or written, the file is not an SQLite database or not ours, or
        the database was migrated by a newer edge-agent than this one.
        """
        path = Path(path).expanduser()
        folder = path.parent
        old_umask = os.umask(0o077)  # everything created below (folders, db, -wal, -shm) is owner-only
        try:
            if folder.exists() and not folder.is_dir():
                raise StoreError(f"store folder {str(folder)!r}: exists and is not a folder")
            if not folder.exists():
                try:
                    folder.mkdir(parents=True, mode=0o700)
                except OSError as e:
                    raise StoreError(f"store folder {str(folder)!r}: cannot create ({e.strerror})") from None
                os.chmod(folder, 0o700)
            if path.exists() and not path.is_file():
                raise StoreError(f"store {str(path)!r}: exists and is not a file")
            try:
                conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            except sqlite3.Error as e:
                raise StoreError(f"store {str(path)!r}: cannot open ({e})") from None
            try:
                cls._configure(conn, busy_timeout)
                cls._check_ours(conn, path)
                migrations.migrate(conn)
            except StoreError:
                conn.close()
                raise
            except sqlite3.DatabaseError as e:
                conn.close()
                msg = str(e)
                if "not a database" in msg or "malformed" in msg:
                    raise StoreError(f"store {str(path)!r}: not an SQLite database ({msg})") from None
                raise StoreError(f"store {str(path)!r}: cannot open ({msg})") from None
        finally:
            os.umask(old_umask)
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            _owner_only(p)
        return cls(path, conn)

    @staticmethod
    def _configure(conn: sqlite3.Connection, busy_timeout: float) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # The first statement that reads the header: a non-database file fails here.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"store: cannot switch to WAL journal (got {mode!r}); is the folder on a network share?")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")  # a committed segment survives power loss, not only SIGKILL
        conn.execute("PRAGMA secure_delete = ON")  # forgotten memories are overwritten, not left in free pages

    @staticmethod
    def _check_ours(conn: sqlite3.Connection, path: Path) -> None:
        newer = migrations.unknown(conn)
        if newer:
            raise StoreError(f"store {str(path)!r}: schema is newer than this edge-agent (unknown migration "
                             f"{newer[0]!r}); upgrade edge-agent")
        if not migrations.applied(conn):
            foreign = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "AND name != '_migrations'")]
            if foreign:
                raise StoreError(f"store {str(path)!r}: an SQLite database of something else "
                                 f"(has table {foreign[0]!r}); choose another path")

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE); nested uses join the outer one."""
        with self._lock:
            if self.conn.in_transaction:
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self.conn.execute(sql, tuple(params))
            keys = [d[0] for d in cur.description]
            return [dict(zip(keys, r)) for r in cur.fetchall()]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _insert(self, table: str, record: dict[str, Any]) -> int:
        try:
            return int(self.db[table].insert(record).last_pk)
        except sqlite3.IntegrityError as e:
            raise StoreError(f"{table}: cannot insert ({e})") from None

    @staticmethod
    def _ids(ids: Iterable[int]) -> tuple[str, list[int]]:
        vals = [int(i) for i in ids]
        return ",".join("?" * len(vals)), vals

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

    def last_committed_segment(self, stream_id: int) -> int | None:
        """Highest segment index committed for the stream (written, failed or forgotten), None if none."""
        row = self._one("SELECT MAX(idx) AS i FROM segments WHERE stream_id = ?", (int(stream_id),))
        return None if row is None or row["i"] is None else int(row["i"])

    def commit_segment(self, stream_id: int, segment: Segment, *, memory: str | None, failure: str | None,
                       writer_model: str, adapter_id: str | None, n_tokens: int,
                       latency_s: float) -> tuple[int, int | None]:
        """Record a segment and its memory (or why none was written) in ONE transaction.

        Exactly one of `memory` / `failure` is given. Idempotent: if (stream, segment.index) is already
        committed, its existing ids are returned and nothing changes (a resumed run may redo a segment).
        """
        if (memory is None) == (failure is None):
            raise ValueError("commit_segment: give exactly one of memory= and failure=")
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
                "latency_s": float(latency_s), "created_at": now,
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

    # ------------------------------------------------------------------ memories

    def recent_memories(self, stream_id: int, before_index: int, k: int) -> list[dict[str, Any]]:
        """Memories of the k segments before `before_index` (idx in [before_index-k, before_index-1]), oldest
        first; rows also carry `segment_index`."""
        return self._rows(
            f"SELECT {_MEM_SELECT}, s.idx AS segment_index FROM memories m JOIN segments s ON s.id = m.segment_id "
            "WHERE m.stream_id = ? AND s.idx >= ? AND s.idx < ? ORDER BY s.idx",
            (int(stream_id), int(before_index) - int(k), int(before_index)))

    def memories(self, since: float | None = None, until: float | None = None, search: str | None = None,
                 stream_id: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Memory rows ordered by t_start. `search` keeps memories containing every word of it (any text is safe)."""
        tsql, params = _time_filter(since, until)
        sql = f"SELECT {_MEM_SELECT} FROM memories m WHERE 1 = 1" + tsql
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
        tsql, params = _time_filter(since, until)
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
        by_id = {r["id"]: r for r in self._rows(f"SELECT {_MEM_SELECT} FROM memories m WHERE m.id IN ({marks})", vals)}
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
        tsql, params = _time_filter(since, until)
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
        tsql, params = _time_filter(since, until)
        sql = (f"SELECT {_MEM_SELECT} FROM memories m WHERE NOT EXISTS (SELECT 1 FROM memory_embeddings e "
               f"WHERE e.memory_id = m.id AND e.model = ?){tsql} ORDER BY m.id")
        params = [model, *params]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._rows(sql, params)

    # ------------------------------------------------------------------ questions, answers, feedback

    def add_question(self, text: str, options: list[str], asked_at: float) -> int:
        with self._tx():
            return self._insert("questions", {
                "text": clean_text(text), "options": json.dumps([clean_text(o) for o in options or []]),
                "asked_at": float(asked_at), "created_at": time.time()})

    def add_answer(self, question_id: int, *, choice: str | None, text: str, abstained: bool, cited: list[int],
                   model: str, adapter_id: str | None, reason: str | None = None,
                   shown: list[int] | None = None) -> int:
        """Record an answer, the memories shown to the answerer (`shown`, in rank order) and those it cites.

        Memory ids that no longer exist (forgotten meanwhile) are skipped.
        """
        with self._tx() as conn:
            if self._one("SELECT 1 AS x FROM questions WHERE id = ?", (int(question_id),)) is None:
                raise StoreError(f"question {question_id}: no such question")
            answer_id = self._insert("answers", {
                "question_id": int(question_id), "choice": choice, "text": clean_text(text),
                "abstained": int(bool(abstained)), "reason": None if reason is None else clean_text(reason),
                "model": model, "adapter_id": adapter_id, "created_at": time.time()})
            cited_set = {int(c) for c in cited}
            ordered = list(dict.fromkeys([*(int(s) for s in shown or []), *(int(c) for c in cited)]))
            for rank, mid in enumerate(ordered):
                conn.execute(
                    "INSERT INTO answer_citations (answer_id, memory_id, rank, cited) "
                    "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM memories WHERE id = ?)",
                    (answer_id, mid, rank, int(mid in cited_set), mid))
            return answer_id

    def get_answer(self, answer_id: int) -> dict[str, Any]:
        """The answer with its question, options, cited memories ({id, t_start, t_end, text}), shown ids, feedback."""
        row = self._one(
            "SELECT a.*, q.text AS question, q.options AS options, q.asked_at AS asked_at "
            "FROM answers a JOIN questions q ON q.id = a.question_id WHERE a.id = ?", (int(answer_id),))
        if row is None:
            raise StoreError(f"answer {answer_id}: no such answer")
        row["options"] = json.loads(row["options"])
        row["abstained"] = bool(row["abstained"])
        links = self._rows(
            "SELECT ac.cited, m.id, m.t_start, m.t_end, m.text FROM answer_citations ac "
            "JOIN memories m ON m.id = ac.memory_id WHERE ac.answer_id = ? ORDER BY ac.rank", (int(answer_id),))
        row["citations"] = [{k: r[k] for k in ("id", "t_start", "t_end", "text")} for r in links if r["cited"]]
        row["shown"] = [r["id"] for r in links]
        row["feedback"] = self._rows("SELECT id, correct, corrected, created_at FROM feedback WHERE answer_id = ? "
                                     "ORDER BY id", (int(answer_id),))
        for f in row["feedback"]:
            f["correct"] = bool(f["correct"])
        return row

    def answers(self, limit: int | None = None, with_feedback: bool = False) -> list[dict[str, Any]]:
        """Answers (as get_answer), newest first; with_feedback=True keeps only those with feedback."""
        sql = "SELECT a.id FROM answers a"
        if with_feedback:
            sql += " WHERE EXISTS (SELECT 1 FROM feedback f WHERE f.answer_id = a.id)"
        sql += " ORDER BY a.id DESC"
        params: list[Any] = []
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self.get_answer(r["id"]) for r in self._rows(sql, params)]

    def add_feedback(self, answer_id: int, correct: bool, corrected: str | None = None) -> int:
        with self._tx():
            if self._one("SELECT 1 AS x FROM answers WHERE id = ?", (int(answer_id),)) is None:
                raise StoreError(f"answer {answer_id}: no such answer")
            return self._insert("feedback", {
                "answer_id": int(answer_id), "correct": int(bool(correct)),
                "corrected": None if corrected is None else clean_text(corrected), "created_at": time.time()})

    def feedback(self, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Feedback rows joined with their answer and question (what Phase Two's reward reads)."""
        sql = ("SELECT f.id, f.answer_id, f.correct, f.corrected, f.created_at, a.question_id, a.choice, "
               "a.text AS answer_text, a.abstained, q.text AS question, q.options, q.asked_at "
               "FROM feedback f JOIN answers a ON a.id = f.answer_id JOIN questions q ON q.id = a.question_id")
        params: list[int] = []
        if ids is not None:
            marks, params = self._ids(ids)
            sql += f" WHERE f.id IN ({marks})"
        rows = self._rows(sql + " ORDER BY f.id", params)
        for r in rows:
            r["correct"], r["abstained"], r["options"] = bool(r["correct"]), bool(r["abstained"]), json.loads(r["options"])
        return rows

    def delete_feedback(self, ids: Iterable[int]) -> dict[str, int]:
        """Delete feedback and the pairs derived from it; returns counts."""
        marks, vals = self._ids(ids)
        if not vals:
            return {"feedback": 0, "pairs": 0}
        with self._tx() as conn:
            n_pairs = conn.execute(
                f"SELECT COUNT(DISTINCT pair_id) FROM pair_feedback WHERE feedback_id IN ({marks})", vals).fetchone()[0]
            n = conn.execute(f"DELETE FROM feedback WHERE id IN ({marks})", vals).rowcount
        return {"feedback": n, "pairs": int(n_pairs)}

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
        """Record keyframe files kept for training until `expires_at` (absolute seconds)."""
        with self._tx():
            if self._one("SELECT 1 AS x FROM segments WHERE id = ?", (int(segment_id),)) is None:
                raise StoreError(f"segment {segment_id}: no such segment")
            now = time.time()
            return [self._insert("kept_frames", {"segment_id": int(segment_id), "path": os.fspath(p),
                                                 "expires_at": float(expires_at), "created_at": now})
                    for p in paths]

    def kept_frames(self, segment_id: int | None = None) -> list[dict[str, Any]]:
        if segment_id is None:
            return self._rows("SELECT * FROM kept_frames ORDER BY id")
        return self._rows("SELECT * FROM kept_frames WHERE segment_id = ? ORDER BY id", (int(segment_id),))

    def expired_frames(self, now: float | None = None) -> list[dict[str, Any]]:
        """Kept frames whose time is up (expires_at <= now)."""
        now = time.time() if now is None else float(now)
        return self._rows("SELECT * FROM kept_frames WHERE expires_at <= ? ORDER BY id", (now,))

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
            paths = [r[0] for r in conn.execute(f"SELECT path FROM kept_frames WHERE {col} IN ({marks})", vals)]
            n = conn.execute(f"DELETE FROM kept_frames WHERE {col} IN ({marks})", vals).rowcount
            if remove_files:
                _unlink_all(paths)
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

    # ------------------------------------------------------------------ adapters

    @staticmethod
    def _adapter_out(row: dict[str, Any]) -> dict[str, Any]:
        for k in (*_ADAPTER_JSON, "extra"):
            row[k] = json.loads(row[k])
        extra = row.pop("extra")
        return {**extra, **row}

    def add_adapter(self, row: dict[str, Any]) -> str:
        """Register an adapter. `row` needs "id"; known columns are stored as such (pair_ids, feedback_ids,
        metrics as JSON), any other key lands in `extra` and comes back as a key of the row. status defaults
        to "candidate"; "active" activates it (deactivating the previous one)."""
        if not row.get("id"):
            raise StoreError("add_adapter: the row needs an 'id'")
        status = row.get("status", "candidate")
        if status not in ADAPTER_STATUSES:
            raise StoreError(f"adapter {row['id']}: status={status!r}, expected one of {', '.join(ADAPTER_STATUSES)}")
        rec: dict[str, Any] = {"extra": {}}
        for k, v in row.items():
            if k in _ADAPTER_COLUMNS and k != "extra":
                rec[k] = v
            else:
                rec["extra"][k] = v
        for k, default in _ADAPTER_JSON.items():
            rec[k] = json.dumps(rec.get(k, default), sort_keys=True)
        rec["extra"] = json.dumps(rec["extra"], sort_keys=True, default=str)
        rec["status"] = "candidate" if status == "active" else status
        rec.setdefault("created_at", time.time())
        with self._tx():
            if self._one("SELECT 1 AS x FROM adapters WHERE id = ?", (str(row["id"]),)):
                raise StoreError(f"adapter {row['id']}: already registered")
            self.db["adapters"].insert(rec)
            if status == "active":
                self.activate(str(row["id"]))
        return str(row["id"])

    def adapters(self) -> list[dict[str, Any]]:
        return [self._adapter_out(r) for r in self._rows("SELECT * FROM adapters ORDER BY created_at, id")]

    def get_adapter(self, adapter_id: str) -> dict[str, Any]:
        row = self._one("SELECT * FROM adapters WHERE id = ?", (str(adapter_id),))
        if row is None:
            raise StoreError(f"adapter {adapter_id}: no such adapter")
        return self._adapter_out(row)

    def active_adapter(self) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM adapters WHERE status = 'active'")
        return None if row is None else self._adapter_out(row)

    def set_adapter_status(self, adapter_id: str, status: str, reason: str | None = None) -> None:
        """Change an adapter's status (and reason). "active" goes through activate()."""
        if status not in ADAPTER_STATUSES:
            raise StoreError(f"adapter {adapter_id}: status={status!r}, expected one of {', '.join(ADAPTER_STATUSES)}")
        with self._tx() as conn:
            self.get_adapter(adapter_id)
            if status == "active":
                self.activate(adapter_id)
                if reason is not None:
                    conn.execute("UPDATE adapters SET reason = ? WHERE id = ?", (reason, str(adapter_id)))
                return
            conn.execute("UPDATE adapters SET status = ?, reason = COALESCE(?, reason) WHERE id = ?",
                         (status, reason, str(adapter_id)))

    def activate(self, adapter_id: str) -> dict[str, Any]:
        """Make `adapter_id` the active adapter; the previous one becomes inactive and is remembered for rollback."""
        with self._tx() as conn:
            self.get_adapter(adapter_id)
            prev = self._one("SELECT id FROM adapters WHERE status = 'active'")
            if prev is not None and prev["id"] == str(adapter_id):
                return self.get_adapter(adapter_id)
            if prev is not None:
                conn.execute("UPDATE adapters SET status = 'inactive' WHERE id = ?", (prev["id"],))
            conn.execute("UPDATE adapters SET status = 'active', previous_id = ?, activated_at = ? WHERE id = ?",
                         (None if prev is None else prev["id"], time.time(), str(adapter_id)))
            return self.get_adapter(adapter_id)

    def rollback_adapter(self) -> dict[str, Any] | None:
        """Deactivate the active adapter (status rolled_back) and reactivate the one before it, if any.

        Returns the adapter now active, or None (then the writer runs the base model).
        """
        with self._tx() as conn:
            cur = self._one("SELECT id, previous_id FROM adapters WHERE status = 'active'")
            if cur is None:
                raise StoreError("adapter rollback: no adapter is active")
            conn.execute("UPDATE adapters SET status = 'rolled_back' WHERE id = ?", (cur["id"],))
            prev = cur["previous_id"]
            if prev is None or self._one("SELECT 1 AS x FROM adapters WHERE id = ?", (prev,)) is None:
                return None
            conn.execute("UPDATE adapters SET status = 'active', activated_at = ? WHERE id = ?", (time.time(), prev))
            return self.get_adapter(prev)

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
            counts["frame_files"] = _unlink_all(paths)
        if counts["memories"] or counts["kept_frames"]:
            # Old page images stay in the -wal until a checkpoint; fold them in now (best effort:
            # a reader in another process may keep part of the log alive until its next checkpoint).
            with self._lock:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return counts

    # ------------------------------------------------------------------ misc

    def counts(self) -> dict[str, int]:
        """Rows per table (for `doctor` and tests)."""
        tables = ["streams", "segments", "memories", "memory_embeddings", "questions", "answers",
                  "answer_citations", "feedback", "candidates", "kept_frames", "pairs", "pair_feedback", "adapters"]
        return {t: int(self._one(f"SELECT COUNT(*) AS n FROM {t}")["n"]) for t in tables}


def _unlink_all(paths: Iterable[str]) -> int:
    """Remove files; a file already gone is fine. Returns how many existed."""
    n = 0
    for p in paths:
        try:
            os.unlink(p)
            n += 1
        except FileNotFoundError:
            pass
    return n
