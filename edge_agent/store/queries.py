"""The base every query module of the store builds on: the connection, one-transaction writes, row helpers,
the time-filter rule and the column lists shared by the table groups."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from edge_agent.errors import StoreError

BUSY_TIMEOUT_S = 30.0
ADAPTER_STATUSES = ("candidate", "active", "inactive", "rejected", "rolled_back", "failed")
ADAPTER_COLUMNS = ("id", "status", "reason", "path", "gguf_path", "layer", "scale", "hidden_size",
                    "base_model_hash", "pair_ids", "feedback_ids", "metrics", "extra", "previous_id",
                    "created_at", "activated_at")
ADAPTER_JSON = {"pair_ids": [], "feedback_ids": [], "metrics": {}}
MEMORY_COLUMNS = ("id", "stream_id", "segment_id", "text", "t_start", "t_end", "writer_model", "adapter_id",
                  "n_tokens", "created_at")
MEM_SELECT = ", ".join(f"m.{c}" for c in MEMORY_COLUMNS)


def time_filter(since: float | None, until: float | None, alias: str = "m") -> tuple[str, list[Any]]:
    """SQL conditions (joined with AND, leading ' AND ') selecting memories by the module's time rule."""
    sql, params = "", []
    if since is not None:
        sql += f" AND {alias}.t_end > ?"
        params.append(float(since))
    if until is not None:
        sql += f" AND {alias}.t_end <= ?"
        params.append(float(until))
    return sql, params


class Queries:
    """Shared state and helpers; `Store` (db.py) combines this with one query class per table group."""

    path: "os.PathLike"
    conn: sqlite3.Connection
    _lock: Any

    # Files inside the home (kept keyframes under frames/, adapters under adapters/) are recorded relative to the
    # database's folder, so a home moved or restored elsewhere still finds, and deletes, its own files; files
    # elsewhere keep their absolute path. Readers get absolute paths back.
    @cached_property
    def home_dir(self) -> Path:
        """The database's folder (the home, for a home's memory.db), resolved."""
        return Path(self.path).resolve().parent

    def _stored_path(self, path: "str | os.PathLike") -> str:
        """How a file path is recorded: relative to the database's folder when inside it, else absolute."""
        return stored_path(self.home_dir, path)

    def _real_path(self, stored: str | None) -> str | None:
        """The absolute path of a recorded file path (None stays None)."""
        if stored is None or os.path.isabs(stored):
            return stored
        return str(self.home_dir / stored)


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
        """INSERT one row (table and column names are ours, never user text); returns its rowid.

        Plain SQL rather than sqlite-utils: importing sqlite-utils imports pandas and pyarrow wherever they
        are installed, about 100 MB resident in every process that opens the store (README, Performance)."""
        cols = list(record)
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        try:
            with self._lock:
                return int(self.conn.execute(sql, [record[c] for c in cols]).lastrowid)
        except sqlite3.IntegrityError as e:
            raise StoreError(f"{table}: cannot insert ({e})") from None

    @staticmethod
    def _ids(ids: Iterable[int]) -> tuple[str, list[int]]:
        vals = [int(i) for i in ids]
        return ",".join("?" * len(vals)), vals


def stored_path(home: Path, path: "str | os.PathLike") -> str:
    """`path` relative to the folder `home` (POSIX separators) when it lies inside it, else absolute."""
    full = Path(path).resolve()
    try:
        return full.relative_to(home).as_posix()
    except ValueError:
        return str(full)


def unlink_all(paths: Iterable[str]) -> int:
    """Remove files; a file already gone is fine. Returns how many existed."""
    n = 0
    for p in paths:
        try:
            os.unlink(p)
            n += 1
        except FileNotFoundError:
            pass
    return n
