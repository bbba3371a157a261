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

import os
import sqlite3
import stat
import threading
from pathlib import Path

import sqlite_utils

from edge_agent.errors import StoreError
from edge_agent.store import migrations
from edge_agent.store.adapters import AdapterQueries
from edge_agent.store.answers import AnswerQueries
from edge_agent.store.candidates import CandidateQueries
from edge_agent.store.forget import ForgetQueries
from edge_agent.store.memories import MemoryQueries
from edge_agent.store.queries import BUSY_TIMEOUT_S
from edge_agent.store.streams import StreamQueries


def _owner_only(path: Path) -> None:
    """chmod 0600 a file we own that is readable by others (the db and its -wal/-shm)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600)


class Store(StreamQueries, MemoryQueries, AnswerQueries, CandidateQueries, AdapterQueries, ForgetQueries):
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

    # ------------------------------------------------------------------ misc

    def counts(self) -> dict[str, int]:
        """Rows per table (for `doctor` and tests)."""
        tables = ["streams", "segments", "memories", "memory_embeddings", "questions", "answers",
                  "answer_citations", "feedback", "candidates", "kept_frames", "pairs", "pair_feedback", "adapters"]
        return {t: int(self._one(f"SELECT COUNT(*) AS n FROM {t}")["n"]) for t in tables}
