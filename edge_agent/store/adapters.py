"""Queries on `adapters`: the registry rows of trained steering vectors and which one is active."""

from __future__ import annotations

import json
import time
from typing import Any

from edge_agent.errors import StoreError
from edge_agent.store.queries import (
    ADAPTER_COLUMNS,
    ADAPTER_JSON,
    ADAPTER_STATUSES,
    Queries,
)


class AdapterQueries(Queries):
    # ------------------------------------------------------------------ adapters

    def _adapter_out(self, row: dict[str, Any]) -> dict[str, Any]:
        for k in (*ADAPTER_JSON, "extra"):
            row[k] = json.loads(row[k])
        row["path"], row["gguf_path"] = self._real_path(row["path"]), self._real_path(row["gguf_path"])
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
            if k in ADAPTER_COLUMNS and k != "extra":
                rec[k] = v
            else:
                rec["extra"][k] = v
        for k in ("path", "gguf_path"):
            if rec.get(k) is not None:
                rec[k] = self._stored_path(rec[k])
        for k, default in ADAPTER_JSON.items():
            rec[k] = json.dumps(rec.get(k, default), sort_keys=True)
        rec["extra"] = json.dumps(rec["extra"], sort_keys=True, default=str)
        rec["status"] = "candidate" if status == "active" else status
        rec.setdefault("created_at", time.time())
        with self._tx():
            if self._one("SELECT 1 AS x FROM adapters WHERE id = ?", (str(row["id"]),)):
                raise StoreError(f"adapter {row['id']}: already registered")
            self._insert("adapters", rec)
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
