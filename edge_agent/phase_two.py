"""Phase Two on the device: what the writer keeps for it (keyframes, candidate memories) and the `adapt` job.

Training itself lives in `adapt/` (torch); this module connects it to the writer, the store and the model.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from edge_agent.config import Config
from edge_agent.errors import ModelError
from edge_agent.memory import MemoryWriter, WindowEntry, WriteResult
from edge_agent.memory.prompts import writer_messages
from edge_agent.memory.validate import Validation
from edge_agent.store import Store
from edge_agent.types import CANDIDATE_SAMPLING, Frame, Message, Segment, SteeringVector
from edge_agent.vlm.base import Backend


def _sampled_for_candidates(stream_key: str, index: int, share: float) -> bool:
    """A deterministic share of segments (same answer on a re-run) gets candidate memories."""
    if share <= 0:
        return False
    h = int(hashlib.sha256(f"{stream_key}/{index}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < share


def save_keyframes(folder: Path, seg: Segment) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = []
    for f in seg.keyframes:
        path = folder / f"{f.index:08d}_{f.t:.3f}.png"
        cv2.imwrite(str(path), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def _load_kept_segment(store: Store, segment_row: dict) -> Segment | None:
    """A segment rebuilt from its kept keyframes (None when they expired or were used)."""
    import cv2

    rows = store.kept_frames(segment_row["id"])
    frames = []
    for r in rows:
        img = cv2.imread(r["path"])
        if img is None:
            return None
        index, _, t = Path(r["path"]).stem.partition("_")
        frames.append(Frame(int(index), float(t), cv2.cvtColor(img, cv2.COLOR_BGR2RGB)))
    if not frames:
        return None
    return Segment(segment_row["idx"], segment_row["t_start"], segment_row["t_end"], frames)


def kept_window_messages(store: Store, segment_id: int, window_segments: int) -> list[Message] | None:
    """The writer's prompt for a past segment, rebuilt from kept frames and stored memories (Phase Two)."""
    seg_row = store.get_segment(segment_id)
    stream = store.get_stream(seg_row["stream_id"])
    new = _load_kept_segment(store, seg_row)
    if new is None:
        return None
    context = []
    earlier = store.segments(seg_row["stream_id"], from_index=seg_row["idx"] - window_segments + 1,
                             to_index=seg_row["idx"] - 1)
    memories = {m["segment_id"]: m["text"] for m in store.recent_memories(seg_row["stream_id"], seg_row["idx"],
                                                                        window_segments - 1)}
    for row in earlier:
        seg = _load_kept_segment(store, row)
        if seg is not None:
            context.append((seg, memories.get(row["id"])))
    return writer_messages(stream["fingerprint"][:16], context, new)


def _add_candidates(store: Store, segment_id: int, memory: str | None,
                    sampled: list[tuple[str, Validation]]) -> int:
    """One window's written (greedy) memory and its sampled alternatives, stored as Phase Two candidates."""
    if memory:
        store.add_candidate(segment_id, json.dumps({"description": memory}), valid=True, failure=None,
                            sampling={"temperature": 0.0}, source="writer")
    for raw, check in sampled:
        store.add_candidate(segment_id, raw, valid=check.ok, failure=check.failure,
                            sampling=CANDIDATE_SAMPLING.__dict__, source="sampled")
    return len(sampled)


def keep_for_phase_two(store: Store, writer: MemoryWriter, cfg: Config, segment_id: int, seg: Segment,
                       result: WriteResult, window: list[WindowEntry]) -> None:
    """Keep the segment's keyframes (bounded time) and, for a share of segments, sampled alternatives.

    Phase Two compares candidate memories of the same window; the frames let `adapt` rebuild the window's
    prompt later, also for segments the wearer only asks about afterwards.
    """
    wcfg = cfg.writer
    if wcfg.keep_frames_hours <= 0 or not seg.keyframes:
        return
    paths = save_keyframes(cfg.frames_dir / writer.stream_key / f"{seg.index:06d}", seg)
    store.keep_frames(segment_id, paths, expires_at=time.time() + wcfg.keep_frames_hours * 3600)
    if not _sampled_for_candidates(writer.stream_key, seg.index, wcfg.candidate_share):
        return
    _add_candidates(store, segment_id, result.text,
                    writer.sample_candidates(window, seg, wcfg.candidates_per_segment, seed=seg.index * 1000))


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
        added += _add_candidates(store, sid, memory, writer.sample_messages(
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


def run_adapt_job(cfg: Config, progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Candidates for asked-about segments -> reward -> pairs -> DPO -> gate -> registry. Returns the summary."""
    from edge_agent.adapt.loop import run_adapt
    from edge_agent.adapt.pairs import holdout_segment_ids
    from edge_agent.adapt.reward import RewardConfig
    from edge_agent.models import resolve
    from edge_agent.runtime import open_backend, open_embedder

    model = resolve(cfg.model.name, cfg.home)
    if model.hf_dir is None or not model.hf_dir.is_dir():
        raise ModelError(f"model {model.name!r}: Phase Two trains against the full-precision Hugging Face "
                         f"checkpoint, and none is installed beside {model.model_path}")
    store = Store.open(cfg.db_path)
    backend = open_backend(cfg)
    try:
        backend.set_steering(None)  # the judge and the candidates come from the reference (Phase One) policy
        added = fill_candidates(store, backend, cfg, asked_segment_ids(store))
        if progress:
            progress("candidates", {"added": added})
        summary = run_adapt(
            store, cfg, model.hf_dir, backend, open_embedder(cfg),
            format_compliance(store, backend, cfg, holdout_segment_ids(store)), progress,
            prompt_fn=lambda st, sid: kept_window_messages(st, sid, cfg.writer.window_segments),
            reward_cfg=RewardConfig(rule=cfg.adapt.reward_rule), base_model_hash=backend.model_hash)
    finally:
        backend.close()
    summary["candidates_added"] = added
    return summary
