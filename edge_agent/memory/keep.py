"""What the writer keeps for Phase Two as it writes: each segment's keyframes (for a bounded time) and, for a
share of segments, sampled alternative memories; and the writer's prompt rebuilt later from what was kept."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from edge_agent.config import Config
from edge_agent.memory.prompts import writer_messages
from edge_agent.memory.validate import Validation
from edge_agent.memory.writer import MemoryWriter, WindowEntry, WriteResult
from edge_agent.store import Store
from edge_agent.types import CANDIDATE_SAMPLING, Frame, Message, Segment


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


def _frame_position(path: Path, fallback_index: int, fallback_t: float) -> tuple[int, float]:
    """(frame index, stream time) from a kept file's name `<index>_<t>.png` (as `save_keyframes` writes it);
    files kept by other tools keep their order and the segment's start time."""
    index, _, t = path.stem.partition("_")
    try:
        return int(index), float(t)
    except ValueError:
        return fallback_index, fallback_t


def _load_kept_segment(store: Store, segment_row: dict) -> Segment | None:
    """A segment rebuilt from its kept keyframes (None when they expired or were used)."""
    import cv2

    rows = store.kept_frames(segment_row["id"])
    frames = []
    for r in rows:
        img = cv2.imread(r["path"])
        if img is None:
            return None
        frames.append(Frame(*_frame_position(Path(r["path"]), len(frames), segment_row["t_start"]),
                            cv2.cvtColor(img, cv2.COLOR_BGR2RGB)))
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


def add_candidates(store: Store, segment_id: int, memory: str | None,
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
    add_candidates(store, segment_id, result.text,
                    writer.sample_candidates(window, seg, wcfg.candidates_per_segment, seed=seg.index * 1000))
