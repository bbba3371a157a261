"""Adapter registry: steering vectors on disk under <home>/adapters/<id>/ and their rows in the store.

Owns: naming adapters, writing each as safetensors (`adapter.safetensors`, the project's format) and as a
llama.cpp control vector (`control_vector.gguf`, loadable by stock `llama-cli --control-vector`), recording
provenance (pair ids, feedback ids), metrics and the base model hash, and list / activate / rollback / export.
Activation state lives in the store (one active adapter, enforced by the database), so a writer in another
process sees a change on its next `active()` check.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edge_agent.errors import AdapterError, StoreError
from edge_agent.types import SteeringVector
from edge_agent.vlm import steering

SAFETENSORS_NAME = "adapter.safetensors"
GGUF_NAME = "control_vector.gguf"


def new_adapter_id(vector: np.ndarray, now: float | None = None) -> str:
    """`YYYYmmdd-HHMMSS-<6 hex of the vector>`: sorts by time, distinct for distinct vectors."""
    now = time.time() if now is None else now
    digest = hashlib.sha256(np.ascontiguousarray(vector, np.float32).tobytes()).hexdigest()[:6]
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{digest}"


class AdapterRegistry:
    """The adapters of one home. `AdapterRegistry.open(cfg)` opens its store too and closes it on exit."""

    def __init__(self, store: Any, adapters_dir: str | Path):
        self.store = store
        self.dir = Path(adapters_dir)
        self._owns_store = False

    @classmethod
    def open(cls, cfg: Any) -> "AdapterRegistry":
        from edge_agent.store import Store

        reg = cls(Store.open(cfg.db_path), cfg.adapters_dir)
        reg._owns_store = True
        return reg

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> "AdapterRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def import_vector(self, path: str | Path, backend: Any, *, activate: bool = False) -> dict[str, Any]:
        """Register a steering vector made elsewhere (safetensors or llama.cpp control-vector GGUF) after the
        backend accepted it. A file without a base-model hash (a stock control vector) is bound to `backend`'s
        model, and the reason says so."""
        import dataclasses

        vec = steering.load(path)
        reason = f"imported from {path}"
        if not vec.base_model_hash:
            vec = dataclasses.replace(vec, base_model_hash=backend.model_hash)
            reason += f"; no base-model hash in the file, bound to {backend.model_name}"
        backend.set_steering(vec)  # AdapterError when hidden size, layer or base model do not fit
        backend.set_steering(None)
        return self.register(vec, status="active" if activate else "inactive", reason=reason)

    def register(self, vector: SteeringVector, *, status: str = "candidate", reason: str | None = None,
                 pair_ids: Iterable[int] = (), feedback_ids: Iterable[int] = (),
                 metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                 adapter_id: str | None = None) -> dict[str, Any]:
        """Write the files and the row; status "active" activates it (the previous one stays for rollback)."""
        steering.validate(vector)
        aid = adapter_id or new_adapter_id(vector.vector)
        while (self.dir / aid).exists() and adapter_id is None:
            aid = new_adapter_id(vector.vector, time.time() + 1)
        vec = SteeringVector(np.asarray(vector.vector, np.float32), vector.layer, vector.scale,
                             vector.base_model_hash, aid)
        folder = self.dir / aid
        if folder.exists() or any(r["id"] == aid for r in self.store.adapters()):
            raise AdapterError(f"adapter {aid}: already registered (folder {str(folder)!r})")
        old_umask = os.umask(0o077)  # owner-only, whatever the caller's umask: adapters come from the wearer's data
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder.mkdir(mode=0o700)
            st = steering.save_safetensors(vec, folder / SAFETENSORS_NAME)
            gg = steering.save_control_vector(vec, folder / GGUF_NAME)
        finally:
            os.umask(old_umask)
        for p in (self.dir, folder):
            os.chmod(p, 0o700)
        for p in (st, gg):
            os.chmod(p, 0o600)
        row = {"id": aid, "status": status, "reason": reason, "path": str(st), "gguf_path": str(gg),
               "layer": vec.layer, "scale": vec.scale, "hidden_size": vec.hidden_size,
               "base_model_hash": vec.base_model_hash, "pair_ids": sorted({int(i) for i in pair_ids}),
               "feedback_ids": sorted({int(i) for i in feedback_ids}), "metrics": metrics or {}}
        row.update(extra or {})
        try:
            self.store.add_adapter(row)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # no orphan files for a row that was not written
            raise
        return self.store.get_adapter(aid)

    def list(self) -> list[dict[str, Any]]:
        return self.store.adapters()

    def get(self, adapter_id: str) -> dict[str, Any]:
        try:
            return self.store.get_adapter(adapter_id)
        except StoreError:
            raise AdapterError(f"adapter {adapter_id}: no such adapter") from None

    def vector(self, adapter_id: str) -> SteeringVector:
        row = self.get(adapter_id)
        return steering.load_safetensors(row["path"])

    def active(self) -> dict[str, Any] | None:
        return self.store.active_adapter()

    def active_vector(self) -> SteeringVector | None:
        row = self.active()
        return None if row is None else steering.load_safetensors(row["path"])

    def activate(self, adapter_id: str) -> dict[str, Any]:
        """Make an adapter active (its files must load). Works for rejected adapters too: the wearer decides."""
        self.vector(adapter_id)
        return self.store.activate(adapter_id)

    def reject(self, adapter_id: str, reason: str) -> None:
        self.store.set_adapter_status(adapter_id, "rejected", reason)

    def mark_failed(self, adapter_id: str, reason: str) -> dict[str, Any]:
        """The writer could not apply this adapter (its file does not load, or the model refuses it): status
        "failed" with `reason`. A failed adapter is no longer the active one, so the writer runs the base model
        until `adapt` or `adapter activate` makes another (or this one, once fixed) active."""
        self.store.set_adapter_status(adapter_id, "failed", reason)
        return self.store.get_adapter(adapter_id)

    def rollback(self) -> dict[str, Any] | None:
        """Back to the adapter active before the current one; None = base model. AdapterError if none active."""
        try:
            return self.store.rollback_adapter()
        except StoreError as e:
            raise AdapterError(str(e)) from None

    def export(self, adapter_id: str, out: str | Path) -> Path:
        """Copy an adapter out: `.gguf` -> llama.cpp control vector, anything else -> safetensors."""
        vec = self.vector(adapter_id)
        return steering.save(vec, Path(out))
