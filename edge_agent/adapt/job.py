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
    """Sample candidate memories for segments the wearer asked about that have none yet (frames still kept)."""
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
        added += add_candidates(store, sid, memory, writer.sample_messages(
            messages, cfg.writer.candidates_per_segment, seed=sid * 1000))
    return added


def format_compliance(store: Store, backend: Backend, cfg: Config, segment_ids: list[int]):
    """compliance(vector) -> share of held-out windows whose greedy memory passes validation under `vector`."""
    writer = MemoryWriter(backend, cfg.writer)
    windows = [m for m in (kept_window_messages(store, sid, cfg.writer.window_segments) for sid in segment_ids)
               if m is not None]

    def compliance(vector: SteeringVector | None) -> float:
        if not windows:
            return 1.0
        backend.set_steering(vector)
        try:
            ok = sum(writer.greedy_check(m).ok for m in windows)
        finally:
            backend.set_steering(None)
        return ok / len(windows)

    return compliance


def run_adapt_job(store: Store, cfg: Config, hf_dir: str | Path, backend: Backend, embedder: Any,
                  progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Candidates for asked-about segments -> reward -> pairs -> DPO -> gate -> registry. Returns the summary.

    `backend` is the deployed model (llama.cpp): it samples candidates, judges pairs and checks format
    compliance; `hf_dir` is its full-precision checkpoint, which the vector is trained against.
    """
    from edge_agent.adapt.loop import run_adapt
    from edge_agent.adapt.pairs import holdout_segment_ids

    backend.set_steering(None)  # the judge and the candidates come from the reference (Phase One) policy
    added = fill_candidates(store, backend, cfg, asked_segment_ids(store))
    if progress:
        progress("candidates", {"added": added})
    summary = run_adapt(store, cfg, hf_dir, backend, embedder,
                        format_compliance(store, backend, cfg, holdout_segment_ids(store)), progress,
                        base_model_hash=backend.model_hash)
    summary["candidates_added"] = added
    return summary
