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

import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path

from edge_agent.errors import StoreError
from edge_agent.store import migrations
from edge_agent.store.adapters import AdapterQueries
from edge_agent.store.answers import AnswerQueries
from edge_agent.store.candidates import CandidateQueries
from edge_agent.store.faces import FaceQueries
from edge_agent.store.forget import ForgetQueries
from edge_agent.store.memories import MemoryQueries
from edge_agent.store.queries import BUSY_TIMEOUT_S
from edge_agent.store.streams import StreamQueries
from edge_agent.store.vectors import VectorQueries

log = logging.getLogger(__name__)


def _owner_only(path: Path) -> None:
    """chmod 0600 a file we own that is readable by others (the db and its -wal/-shm)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600)


def private_home(home: str | os.PathLike, *, create: bool = False) -> Path:
    """Make the data folder owner-only (0700) and tighten what lies directly in it (files 0600, folders 0700).

    Everything the product writes under the home is the wearer's life (memories, frames, questions, adapters),
    so a home created by anyone with a wider umask, or widened later, is tightened here (every command calls
    this through the CLI, `Store.open` for its own folder). A home owned by another user is refused: we cannot
    tighten it, and writing into it would hand them the data. Raises StoreError (one line).
    """
    home = Path(home).expanduser()
    if not home.exists():
        if not create:
            return home
        old = os.umask(0o077)
        try:
            home.mkdir(parents=True, mode=0o700)
        except OSError as e:
            raise StoreError(f"data folder {str(home)!r}: cannot create ({e.strerror})") from None
        finally:
            os.umask(old)
    if not home.is_dir():
        raise StoreError(f"data folder {str(home)!r}: exists and is not a folder")
    st = home.stat()
    if st.st_uid != os.getuid():
        raise StoreError(f"data folder {str(home)!r}: owned by another user (uid {st.st_uid}); choose a folder "
                         "of your own with --home")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(home, stat.S_IMODE(st.st_mode) & 0o700)  # others lose access; the owner keeps what it had
    try:
        children = list(home.iterdir())
    except OSError:
        return home
    for child in children:
        try:
            cst = child.lstat()
        except OSError:
            continue
        if stat.S_ISLNK(cst.st_mode) or cst.st_uid != os.getuid() or not stat.S_IMODE(cst.st_mode) & 0o077:
            continue
        try:
            os.chmod(child, stat.S_IMODE(cst.st_mode) & 0o700)
        except OSError:
            pass
    return home


class Store(StreamQueries, MemoryQueries, VectorQueries, AnswerQueries, CandidateQueries, AdapterQueries,
            FaceQueries, ForgetQueries):
    """Open with `Store.open(path)`; use as a context manager or call `close()`."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn
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
            else:
                st = folder.stat()
                if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
                    os.chmod(folder, 0o700)  # a folder made wider by someone else, or by `demo` under umask 022
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
        store = cls(path, conn)
        store._expire_on_open()
        store.finish_pending_scrub()  # a forget beside a reader left deleted text in the WAL: scrub it now
        return store

    def _expire_on_open(self) -> None:
        """Every command that opens the store deletes kept keyframes past their expiry (privacy: a wearer who
        never runs `adapt` still keeps them only `writer.keep_frames_hours`). Best effort: a read-only home or
        a store locked past the busy timeout leaves them for the next command, never fails the command."""
        try:
            n = self.expire_kept_frames()
        except (sqlite3.OperationalError, OSError) as e:
            log.warning("store %s: expired keyframes not deleted now (%s)", self.path, e)
            return
        if n:
            log.info("store %s: %d expired keyframes deleted", self.path, n)

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
