"""The `device_events` table (migration m003_device_events_issue15): what keep-up and the budget did, per segment.

Written by the runtime's keep-up controller and the storage budget; read by `service status` and
`memories --json`. Rows are small; a query for the last hour uses the created_at index.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

from edge_agent.store import Store

KINDS = ("degraded", "recovered", "dropped", "budget")


def record(store: Store, kind: str, *, stream_id: int | None = None, segment_id: int | None = None,
           segment_index: int | None = None, level: int = 0, detail: dict[str, Any] | None = None,
           now: float | None = None) -> int:
    """Insert one event; returns its id."""
    if kind not in KINDS:
        raise ValueError(f"device event kind {kind!r}: expected one of {KINDS}")
    with store._tx() as conn:
        cur = conn.execute(
            "INSERT INTO device_events (kind, stream_id, segment_id, segment_index, level, detail, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, stream_id, segment_id, segment_index, int(level), json.dumps(detail or {}, sort_keys=True),
             time.time() if now is None else float(now)))
        return int(cur.lastrowid)


def _out(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["detail"] = json.loads(row.get("detail") or "{}")
    return row


def events(store: Store, *, since: float | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """Events in time order, optionally only those created after `since` and of one kind."""
    sql, params = "SELECT * FROM device_events WHERE 1 = 1", []
    if since is not None:
        sql += " AND created_at > ?"
        params.append(float(since))
    if kind is not None:
        sql += " AND kind = ?"
        params.append(kind)
    return [_out(r) for r in store._rows(sql + " ORDER BY id", params)]


def summary_since(store: Store, since: float) -> dict[str, int]:
    """{"degraded_segments", "degradations" (steps down), "recoveries", "dropped_segments", "budget_runs"}."""
    rows = events(store, since=since)
    degraded = [r for r in rows if r["kind"] == "degraded"]
    return {
        "degraded_segments": len(degraded),
        "degradations": sum(1 for r in degraded if r["detail"].get("step") == "down"),
        "recoveries": sum(1 for r in rows if r["kind"] == "recovered"),
        "dropped_segments": sum(int(r["detail"].get("count", 1)) for r in rows if r["kind"] == "dropped"),
        "budget_runs": sum(1 for r in rows if r["kind"] == "budget"),
    }


def degradation_by_segment(store: Store, segment_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """segment id -> the settings it was written with, for the segments that were written degraded."""
    ids = sorted({int(i) for i in segment_ids if i is not None})
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):  # SQLite's host-parameter limit
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for r in store._rows(f"SELECT * FROM device_events WHERE kind = 'degraded' AND segment_id IN ({marks}) "
                             "ORDER BY id", chunk):
            r = _out(r)
            out[int(r["segment_id"])] = {"level": r["level"], **r["detail"]}
    return out


def annotate_memories(store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Memory rows with a "degradation" key: None, or the reduced settings their segment was written with."""
    found = degradation_by_segment(store, (r.get("segment_id") for r in rows))
    return [{**r, "degradation": found.get(r.get("segment_id"))} for r in rows]
