"""The storage budget: `storage.max_bytes` and `storage.retention_days`, enforced between segments.

Used bytes = the database's live pages (page_count - freelist_count, times page_size) + its -wal file + the kept
frames on disk. Live pages, not the file size: SQLite does not shrink its file when rows go, it reuses the
freed pages for the next writes, so a database kept under its budget this way stops growing at about the
budget (the file's high-water mark is reported too, `file_bytes`).

Over the budget, or older than the retention, the OLDEST memories go first, through the store's own `forget`
path, so with each memory go its FTS row and embeddings/vectors (trigger, cascade), its segment's candidates and
kept frames (rows and files) and the training pairs derived from them; the segment rows stay, marked
'forgotten'. Enforcing never makes a write fail: it runs after a segment is committed, and an error in it is
logged and reported, never raised into the writer.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from edge_agent.config import Config
from edge_agent.errors import EdgeAgentError
from edge_agent.store import Store

log = logging.getLogger(__name__)
MAX_ROUNDS = 64  # forget batches per check; a check that cannot get under budget in these says so


def _dir_bytes(path: Path) -> int:
    total = 0
    if not path.is_dir():
        return 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass  # deleted while we walked
    return total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def usage(store: Store, cfg: Config) -> dict[str, Any]:
    """{"used_bytes", "db_live_bytes", "wal_bytes", "frames_bytes", "file_bytes", "max_bytes", "retention_days",
    "over_budget", "memories", "oldest_memory_t"}."""
    with store._lock:
        page_size, = store.conn.execute("PRAGMA page_size").fetchone()
        pages, = store.conn.execute("PRAGMA page_count").fetchone()
        free, = store.conn.execute("PRAGMA freelist_count").fetchone()
        n, oldest = store.conn.execute("SELECT COUNT(*), MIN(t_start) FROM memories").fetchone()
    db_path = Path(store.path)
    wal = _size(Path(f"{db_path}-wal"))
    frames = _dir_bytes(cfg.frames_dir)
    live = (int(pages) - int(free)) * int(page_size)
    used = live + wal + frames
    max_bytes = cfg.storage.max_bytes
    return {"used_bytes": used, "db_live_bytes": live, "wal_bytes": wal, "frames_bytes": frames,
            "file_bytes": _size(db_path) + wal + _size(Path(f"{db_path}-shm")) + frames,
            "max_bytes": max_bytes or None, "retention_days": cfg.storage.retention_days or None,
            "over_budget": bool(max_bytes and used > max_bytes), "memories": int(n), "oldest_memory_t": oldest}


def _add(total: dict[str, int], counts: dict[str, int]) -> None:
    for k, v in counts.items():
        total[k] = total.get(k, 0) + int(v)


def _forget_oldest(store: Store, n: int) -> dict[str, int]:
    """Forget the `n` oldest memories (by start time; ties go together) and what overlaps them."""
    rows = store._rows("SELECT t_start FROM memories ORDER BY t_start, id LIMIT ?", (max(1, int(n)),))
    if not rows:
        return {}
    # forget() takes what starts before `until`: just past the n-th oldest start.
    return store.forget(until=math.nextafter(float(rows[-1]["t_start"]), math.inf))


def enforce(store: Store, cfg: Config, *, now: float | None = None) -> dict[str, Any]:
    """Apply retention, then the byte budget. Returns {"before", "after", "forgotten": counts, "reason", "note"}."""
    now = time.time() if now is None else float(now)
    before = usage(store, cfg)
    forgotten: dict[str, int] = {}
    reasons = []
    expire = getattr(store, "expire_kept_frames", None)
    if expire is not None:  # frames past writer.keep_frames_hours go before any memory
        expired = expire(now)
        if expired:
            forgotten["expired_frames"] = expired
    days = cfg.storage.retention_days
    if days > 0 and before["oldest_memory_t"] is not None and before["oldest_memory_t"] < now - days * 86400:
        _add(forgotten, store.forget(until=now - days * 86400))
        reasons.append(f"older than {days:g} days")
    note = None
    max_bytes = cfg.storage.max_bytes
    if max_bytes:
        cur = usage(store, cfg)
        rounds = 0
        while cur["used_bytes"] > max_bytes and cur["memories"] > 0 and rounds < MAX_ROUNDS:
            # Enough memories for the bytes over, from the mean size per memory (at least 1, at most a quarter).
            share = (cur["used_bytes"] - max_bytes) / max(cur["used_bytes"], 1)
            n = min(max(1, math.ceil(cur["memories"] * share)), max(1, cur["memories"] // 4))
            counts = _forget_oldest(store, n)
            if not counts.get("memories"):
                break
            _add(forgotten, counts)
            rounds += 1
            cur = usage(store, cfg)
        if rounds:
            reasons.append(f"over {max_bytes} bytes")
        if cur["used_bytes"] > max_bytes:
            note = (f"still {cur['used_bytes']} bytes used of {max_bytes} after forgetting what it could "
                    f"({cur['memories']} memories left): raise storage.max_bytes")
    after = usage(store, cfg)
    return {"before": before, "after": after, "forgotten": forgotten, "reason": "; ".join(reasons) or None,
            "note": note, "checked_at": now}


class BudgetKeeper:
    """Checks the budget at start and every `storage.check_every_segments` segments; records what it forgot."""

    def __init__(self, store: Store, cfg: Config, stream_id: int | None = None):
        self.store = store
        self.cfg = cfg
        self.stream_id = stream_id
        self.segments = 0
        self.last: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return bool(self.cfg.storage.max_bytes or self.cfg.storage.retention_days)

    def after_segment(self, segment_id: int | None = None, segment_index: int | None = None) -> dict | None:
        """Call after each committed segment; runs a check when one is due. Never raises a store/OS error."""
        if not self.active:
            return None
        due = self.segments % self.cfg.storage.check_every_segments == 0
        self.segments += 1
        if not due:
            return None
        return self.check(segment_id, segment_index)

    def check(self, segment_id: int | None = None, segment_index: int | None = None) -> dict | None:
        from edge_agent.device.events import record

        try:
            report = enforce(self.store, self.cfg)
            if report["forgotten"].get("memories") or report["note"]:
                record(self.store, "budget", stream_id=self.stream_id, segment_id=segment_id,
                       segment_index=segment_index,
                       detail={"used_bytes": report["after"]["used_bytes"], "max_bytes": self.cfg.storage.max_bytes,
                               "forgotten": report["forgotten"], "reason": report["reason"], "note": report["note"]})
                log.info("storage budget: forgot %s (%s)", report["forgotten"], report["reason"] or report["note"])
        except (EdgeAgentError, OSError) as e:  # a full disk must not stop the camera: say so, keep writing
            log.warning("storage budget check failed: %s", e)
            report = {"error": str(e), "checked_at": time.time()}
        self.last = report
        return report
