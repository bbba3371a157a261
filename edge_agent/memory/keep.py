"""What the writer keeps for Phase Two as it writes: each segment's keyframes (for a bounded time) and, for a
share of segments, sampled alternative memories; and the writer's prompt rebuilt later from what was kept."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

from edge_agent.config import Config
from edge_agent.memory.faces import retag
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


PART_SUFFIX = ".part"  # a keyframe written but not yet recorded: `<index>_<t>.png.part`


def save_keyframes(folder: Path, seg: Segment) -> list[tuple[Path, Path]]:
    """Write the segment's keyframes as PNGs under temporary names; returns (temporary, final) paths.

    The caller records the final paths in the store, then renames (`commit_keyframes`): a process killed
    before the row commits leaves only `.part` files, which `sweep_frames` removes at the next start.
    """
    import cv2

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = []
    try:
        for f in seg.keyframes:
            final = folder / f"{f.index:08d}_{f.t:.3f}.png"
            part = final.with_name(final.name + PART_SUFFIX)
            ok, png = cv2.imencode(".png", cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
            if not ok:
                raise OSError(f"keyframe {final.name}: PNG encoding failed")
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(png.tobytes())
            out.append((part, final))
    except BaseException:
        discard_keyframes(out)
        raise
    return out


def commit_keyframes(written: list[tuple[Path, Path]]) -> list[Path]:
    """Give recorded keyframes their final names."""
    for part, final in written:
        os.replace(part, final)
    return [final for _, final in written]


def discard_keyframes(written: list[tuple[Path, Path]]) -> None:
    for part, _ in written:
        part.unlink(missing_ok=True)


def sweep_frames(store: Store, frames_dir: Path, *, min_part_age_s: float = 60.0,
                 now: float | None = None) -> dict[str, int]:
    """At start: delete files under `frames_dir` that no kept-frame row names (left by a crash), finish the
    rename of `.part` files whose row committed, and remove empty folders. Returns counts.

    Files are listed before the rows are read, so a final-named file of a concurrent `run` (renamed only after
    its row committed) is always known; a `.part` file without a row is deleted only when older than
    `min_part_age_s` (a concurrent writer records its row within a second of writing it).
    """
    counts = {"deleted": 0, "renamed": 0, "folders": 0}
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        return counts
    files = [p for p in frames_dir.rglob("*") if p.is_file() or p.is_symlink()]
    known = {str(Path(r["path"]).resolve()) for r in store.kept_frames()}
    now = time.time() if now is None else now
    for p in files:
        rp = str(p.resolve())
        if rp in known:
            continue
        try:
            if p.name.endswith(PART_SUFFIX):
                final = p.with_name(p.name[: -len(PART_SUFFIX)])
                if str(final.resolve()) in known:
                    os.replace(p, final)
                    counts["renamed"] += 1
                    continue
                if now - p.lstat().st_mtime < min_part_age_s:
                    continue
            p.unlink()
            counts["deleted"] += 1
        except FileNotFoundError:
            pass
    for d in sorted((d for d in frames_dir.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
        try:
            d.rmdir()  # only empty ones
            counts["folders"] += 1
        except OSError:
            pass
    return counts


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
        path = Path(r["path"])
        img = cv2.imread(str(path))
        if img is None:
            return None
        frames.append(Frame(*_frame_position(path, len(frames), segment_row["t_start"]),
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
                    sampled: list[tuple[str, Validation]], people: Sequence[str] = ()) -> int:
    """One window's written (greedy) memory and its sampled alternatives, stored as Phase Two candidates. The
    alternatives name `people` (the face registry's, as the written memory does), so that two candidates differ
    in what they keep, not in which tag the writer guessed."""
    if memory:
        store.add_candidate(segment_id, json.dumps({"description": memory}), valid=True, failure=None,
                            sampling={"temperature": 0.0}, source="writer")
    for raw, check in sampled:
        store.add_candidate(segment_id, _retagged(raw, people), valid=check.ok, failure=check.failure,
                            sampling=CANDIDATE_SAMPLING.__dict__, source="sampled")
    return len(sampled)


def _retagged(raw: str, people: Sequence[str]) -> str:
    """A reply `{"description": ...}` with its `<face_N>` tags set to `people`; any other reply as it came."""
    if not people:
        return raw
    try:
        reply = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(reply, dict) or not isinstance(reply.get("description"), str):
        return raw
    return json.dumps({**reply, "description": retag(reply["description"], people)})


def keep_for_phase_two(store: Store, writer: MemoryWriter, cfg: Config, segment_id: int, seg: Segment,
                       result: WriteResult, window: list[WindowEntry], *, keep_frames: bool = True,
                       people: Sequence[str] = ()) -> None:
    """Keep the segment's keyframes (bounded time) and, for a share of segments, sampled alternatives.

    Phase Two compares candidate memories of the same window; the frames let `adapt` rebuild the window's
    prompt later, also for segments the wearer only asks about afterwards. `keep_frames=False` (the model has
    no checkpoint Phase Two could train against) keeps nothing: neither frames nor candidates could be used.
    """
    wcfg = cfg.writer
    if not keep_frames or wcfg.keep_frames_hours <= 0 or not seg.keyframes:
        return
    folder = (cfg.frames_dir / writer.stream_key / f"{seg.index:06d}").resolve()
    written = save_keyframes(folder, seg)
    try:
        rows = store.keep_frames(segment_id, [final for _, final in written],
                                 expires_at=time.time() + wcfg.keep_frames_hours * 3600)
    except BaseException:
        discard_keyframes(written)
        raise
    if not rows:  # forgotten meanwhile
        discard_keyframes(written)
        return
    commit_keyframes(written)
    if not _sampled_for_candidates(writer.stream_key, seg.index, wcfg.candidate_share):
        return
    add_candidates(store, segment_id, result.text,
                    writer.sample_candidates(window, seg, wcfg.candidates_per_segment, seed=seg.index * 1000), people)
