"""Cutting a stream into fixed segments and choosing the few keyframes of each that reach the model.

A frame at stream time t belongs to segment floor(t / segment_seconds): boundaries come from the stream's own
clock, so a file replayed faster than real time cuts exactly the segments a live run would. Within a segment:

1. sampling: only the first frame of every 1/sample_fps slot is decoded (`retrieve`); the others are only
   grabbed, which costs no colour conversion or copy;
2. downscaling: longest side to `frame_size`, each side a multiple of 32 (Qwen3-VL: 16 px patches, 2x2 merge),
   aspect kept; then BGR -> RGB;
3. de-duplication: a frame whose 32x24 grey thumbnail differs from the last kept frame's by less than
   `scene_change_threshold` (mean absolute difference, 0..1) is folded into it (`frames_merged`);
4. selection: at most `keyframes_per_segment` of the remaining candidates, spread over the segment (one per
   equal time bin, the biggest scene change in each bin) and topped up with the biggest changes left.

Counters: `frames_seen` = sampled frames examined = kept + merged + candidates beyond the cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.config import CaptureConfig
from edge_agent.errors import SourceError
from edge_agent.types import Frame, Segment

from edge_agent.capture.source import VideoSource

THUMB_SIZE = (32, 24)  # (w, h) of the grey thumbnail compared for de-duplication
PATCH = 32  # Qwen3-VL: patch 16 x spatial merge 2
SEEK_MARGIN_S = 1.0  # a resume seeks this much before the first segment to keep


def target_size(width: int, height: int, frame_size: int) -> tuple[int, int]:
    """(w, h) with the longest side `frame_size` (never upscaled past the source), both multiples of 32."""
    longest = max(width, height)
    side = min(frame_size, max(PATCH, (longest // PATCH) * PATCH))
    scale = side / longest

    def snap(x: int) -> int:
        return max(PATCH, int(round(x * scale / PATCH)) * PATCH)

    return (side, snap(height)) if width >= height else (snap(width), side)


def prepare(bgr: np.ndarray, frame_size: int) -> np.ndarray:
    """Downscale (area interpolation) and convert BGR -> RGB: the pixels a keyframe carries."""
    h, w = bgr.shape[:2]
    tw, th = target_size(w, h, frame_size)
    small = bgr if (tw, th) == (w, h) else cv2.resize(bgr, (tw, th), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """Small grey float image in 0..1 used to compare frames cheaply."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def frame_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, 0 (identical) .. 1."""
    return float(np.mean(np.abs(a - b)))


@dataclass
class _Candidate:
    frame: Frame
    score: float  # difference from the last kept frame before it


def select_keyframes(candidates: list[_Candidate], k: int, t_start: float, t_end: float) -> list[_Candidate]:
    """At most k candidates: the biggest change in each of k equal time bins, then the biggest left; time order."""
    if len(candidates) <= k:
        return list(candidates)
    width = max(t_end - t_start, 1e-9) / k
    chosen: set[int] = set()
    for b in range(k):
        in_bin = [i for i, c in enumerate(candidates)
                  if min(k - 1, int((c.frame.t - t_start) / width)) == b]
        if in_bin:
            chosen.add(max(in_bin, key=lambda i: candidates[i].score))
    rest = sorted((i for i in range(len(candidates)) if i not in chosen), key=lambda i: -candidates[i].score)
    chosen.update(rest[: k - len(chosen)])
    return [candidates[i] for i in sorted(chosen)]


class _Builder:
    """The segment being filled."""

    def __init__(self, index: int, seconds: float) -> None:
        self.index = index
        self.t_start = index * seconds
        self.t_end = (index + 1) * seconds
        self.candidates: list[_Candidate] = []
        self.seen = 0
        self.merged = 0
        self.last_t = self.t_start  # time of the last frame grabbed in this segment (sampled or not)

    def finish(self, k: int, partial_end: float | None = None) -> Segment:
        t_end = self.t_end if partial_end is None else min(self.t_end, max(partial_end, self.last_t))
        kept = select_keyframes(self.candidates, k, self.t_start, self.t_end)
        return Segment(index=self.index, t_start=self.t_start, t_end=t_end, keyframes=[c.frame for c in kept],
                       frames_seen=self.seen, frames_merged=self.merged)


def first_segment_index(start_after: float, seconds: float) -> int:
    """Resume point: the first segment that starts at or after `start_after` (earlier ones count as committed)."""
    if start_after <= 0:
        return 0
    return int(math.ceil(start_after / seconds - 1e-6))  # tolerate float noise in a stored t_end


def segment_stream(source: VideoSource, cfg: CaptureConfig, start_after: float = 0.0, *,
                   should_stop: Callable[[], bool] | None = None) -> Iterator[Segment]:
    """Segments of `source` in order, each with its keyframes and counters; connects the source if needed.

    `start_after` (stream seconds) resumes: segments starting before it are skipped (a file seeks there instead
    of decoding them). A file's last, partial segment is emitted with t_end at its last frame. When a live
    source fails for good, the segment in progress is emitted, then the SourceError propagates.
    `should_stop` is polled between frames (the capture thread's stop flag); the segment in progress is then
    dropped, since it is incomplete.
    """
    seconds = cfg.segment_seconds
    k = cfg.keyframes_per_segment
    source.connect()
    first = first_segment_index(start_after, seconds)
    skip_before = first * seconds
    if first > 0 and not source.is_live:
        # Land a little early (codecs with B-frames may overshoot a seek), then skip to the point by grabbing.
        source.seek(max(0.0, skip_before - SEEK_MARGIN_S))
    frame_dt = 1.0 / source.fps if source.fps else 0.0

    current: _Builder | None = None
    last_slot = -1
    last_thumb: np.ndarray | None = None  # of the last kept (non-merged) frame of this segment
    while True:
        if should_stop is not None and should_stop():
            return
        try:
            t = source.grab()
        except SourceError:
            if current is not None and current.seen:
                yield current.finish(k, partial_end=current.last_t + frame_dt)
            raise
        if t is None:  # end of file
            if current is not None and current.seen:
                yield current.finish(k, partial_end=current.last_t + frame_dt)
            return
        if t < skip_before - 1e-6:
            continue  # before the resume point (a seek lands on the keyframe before it)
        index = int(math.floor(t / seconds + 1e-9))
        if current is None or index != current.index:
            if current is not None and current.seen:
                yield current.finish(k)
            current = _Builder(index, seconds)
            last_slot = -1  # a segment's first frame is always sampled, whatever sample_fps is
            last_thumb = None  # segments stand alone: a resumed run picks the same keyframes as a full one
        current.last_t = t
        slot = int(math.floor(t * cfg.sample_fps + 1e-9))
        if slot == last_slot:
            continue  # not sampled: grabbed only, never decoded
        last_slot = slot
        rgb = prepare(source.retrieve(), cfg.frame_size)
        thumb = thumbnail(rgb)
        current.seen += 1
        score = 1.0 if last_thumb is None else frame_difference(thumb, last_thumb)
        # The first sampled frame of a segment is always kept: every segment shows the model something.
        if last_thumb is not None and score < cfg.scene_change_threshold:
            current.merged += 1
            continue
        last_thumb = thumb
        current.candidates.append(_Candidate(Frame(index=source.frame_index, t=t, image=rgb), score))
