"""Keeping up with a live source: degrade step by step when the writer falls behind, recover when it catches up.

Behind means the capture queue holds at least `keepup.max_queue_age_seconds` of stream (the segments waiting
times the segment length; never more than the queue holds minus one segment, so the first step comes before
the queue can overflow). Each segment taken while behind moves one level down the ladder; after
`keepup.recover_after_segments` segments in a row with an empty queue it moves one level back up. The ladder
(built from the effective settings) cycles through three knobs, each step halving one of them:

    fewer keyframes (4 -> 2 -> 1)  ->  smaller frames (448 -> 224 -> ... >= keepup.min_frame_size)
    ->  shorter window (5 -> 3 -> 2 -> 1 segments)

so the cheapest loss in memory quality comes first. Only when the last level cannot keep up does the capture
queue drop the oldest segment (capture/thread.py); those drops are recorded too. Files never degrade: their
reader waits for the writer and nothing is lost.

Every segment written below level 0 gets a 'degraded' device event with its settings (`memories --json` shows
them beside its memory), a step back up a 'recovered' event, and drops a 'dropped' event; the runner also keeps
`<home>/run/status.json` current for `edge-agent service status`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_agent.config import Config
from edge_agent.errors import EdgeAgentError
from edge_agent.store import Store
from edge_agent.types import Frame, Segment

log = logging.getLogger(__name__)
PATCH = 32  # Qwen3-VL: 16 px patches, 2x2 merge: frame sides stay multiples of 32


@dataclass(frozen=True)
class Level:
    """The settings a segment is written with at one rung of the ladder."""

    keyframes: int
    frame_size: int
    window_segments: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def ladder(cfg: Config) -> list[Level]:
    """Level 0 (the configured settings) and each degraded level after it, in the order they are taken."""
    cur = Level(cfg.capture.keyframes_per_segment, cfg.capture.frame_size, cfg.writer.window_segments)
    floor = min(cfg.keepup.min_frame_size, cur.frame_size)
    levels = [cur]
    while True:
        changed = False
        for knob in ("keyframes", "frame_size", "window_segments"):
            if knob == "keyframes":
                nxt = dataclasses.replace(cur, keyframes=max(1, cur.keyframes // 2))
            elif knob == "frame_size":
                nxt = dataclasses.replace(cur, frame_size=max(floor, (cur.frame_size // 2) // PATCH * PATCH))
            else:
                nxt = dataclasses.replace(cur, window_segments=max(1, (cur.window_segments + 1) // 2))
            if nxt != cur:
                levels.append(nxt)
                cur = nxt
                changed = True
        if not changed:
            return levels


def _pick(frames: Sequence[Frame], k: int) -> list[Frame]:
    """k of the keyframes, spread evenly over the segment (first and last kept when k >= 2)."""
    if len(frames) <= k:
        return list(frames)
    if k == 1:
        return [frames[len(frames) // 2]]
    idx = sorted({int(round(i * (len(frames) - 1) / (k - 1))) for i in range(k)})
    return [frames[i] for i in idx]


def _shrink(image: np.ndarray, frame_size: int) -> np.ndarray:
    """Longest side down to `frame_size` (sides multiples of 32, aspect kept), area interpolation."""
    h, w = image.shape[:2]
    if max(h, w) <= frame_size:
        return image
    import cv2  # the runtime has loaded it already (capture)

    scale = frame_size / max(h, w)
    tw = max(PATCH, int(round(w * scale / PATCH)) * PATCH) if w < h else frame_size
    th = max(PATCH, int(round(h * scale / PATCH)) * PATCH) if h <= w else frame_size
    return cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)


def degrade(seg: Segment, window: Sequence[Any], level: Level) -> tuple[Segment, list[Any]]:
    """The segment with fewer / smaller keyframes and the window cut to `level.window_segments` (new one included)."""
    frames = [Frame(f.index, f.t, _shrink(f.image, level.frame_size)) for f in _pick(seg.keyframes, level.keyframes)]
    earlier = list(window)[-(level.window_segments - 1):] if level.window_segments > 1 else []
    return dataclasses.replace(seg, keyframes=frames), earlier


class KeepUp:
    """One per running stream: `before(seg, window, stats)` before writing, `after(segment_id, seg)` after commit."""

    def __init__(self, cfg: Config, store: Store, stream_id: int, *, live: bool, source: str = "",
                 status_path: Path | None = None):
        self.cfg = cfg
        self.store = store
        self.stream_id = stream_id
        self.enabled = bool(cfg.keepup.enabled and live)
        self.live = live
        self.source = source
        self.levels = ladder(cfg)
        self.level = 0
        self.calm = 0  # segments in a row with an empty queue
        seconds = cfg.capture.segment_seconds
        # Step down before the queue can overflow: at most (queue - 1) segments of waiting stream.
        self.threshold = min(cfg.keepup.max_queue_age_seconds, max(1, cfg.capture.queue_segments - 1) * seconds)
        self.status_path = status_path if status_path is not None else cfg.home / "run" / "status.json"
        self._dropped_seen = 0
        self._step = "hold"
        self._queue_age = 0.0
        self._queued = 0
        self._prev_queued = 0
        self._stats: dict[str, int] = {}
        self.counts = {"degraded_segments": 0, "degradations": 0, "recoveries": 0, "dropped_segments": 0}

    @property
    def settings(self) -> Level:
        return self.levels[self.level]

    def before(self, seg: Segment, window: Sequence[Any], stats: dict[str, int]) -> tuple[Segment, list[Any]]:
        """Decide this segment's level from the queue behind it; returns the (possibly degraded) segment and window."""
        self._stats = dict(stats)
        self._queued = int(stats.get("queued", 0))
        self._queue_age = self._queued * self.cfg.capture.segment_seconds
        self._step = "hold"
        if not self.enabled:
            return seg, list(window)
        shrinking, self._prev_queued = self._queued < self._prev_queued, self._queued
        if self._queue_age >= self.threshold - 1e-9:
            self.calm = 0
            # Already catching up (the queue shrank since the last segment): hold, do not overshoot.
            if self.level < len(self.levels) - 1 and not shrinking:
                self.level += 1
                self._step = "down"
                log.warning("writer behind (%.0f s queued): degrading to level %d %s", self._queue_age, self.level,
                            self.settings)
        elif self._queued == 0:
            self.calm += 1
            if self.calm >= self.cfg.keepup.recover_after_segments and self.level > 0:
                self.level -= 1
                self.calm = 0
                self._step = "up"
                log.info("writer caught up: back to level %d %s", self.level, self.settings)
        else:
            self.calm = 0
        if self.level == 0:
            return seg, list(window)
        return degrade(seg, window, self.settings)

    def after(self, segment_id: int | None, seg: Segment) -> None:
        """Record what this segment was written with (and drops since the last one); refresh the status file."""
        from edge_agent.device.events import record

        dropped_total = int(self._stats.get("segments_dropped", 0))
        new_drops, self._dropped_seen = dropped_total - self._dropped_seen, max(dropped_total, self._dropped_seen)
        detail = {**self.settings.as_dict(), "queue_age_s": round(self._queue_age, 3), "step": self._step}
        try:
            if new_drops > 0:
                self.counts["dropped_segments"] += new_drops
                record(self.store, "dropped", stream_id=self.stream_id, segment_id=segment_id,
                       segment_index=seg.index, level=self.level, detail={"count": new_drops, **detail})
            if self._step == "up":
                self.counts["recoveries"] += 1
                record(self.store, "recovered", stream_id=self.stream_id, segment_id=segment_id,
                       segment_index=seg.index, level=self.level, detail=detail)
            if self.level > 0:
                self.counts["degraded_segments"] += 1
                self.counts["degradations"] += self._step == "down"
                record(self.store, "degraded", stream_id=self.stream_id, segment_id=segment_id,
                       segment_index=seg.index, level=self.level, detail=detail)
        except EdgeAgentError as e:  # the memory is committed; a lost event must not stop the camera
            log.warning("keep-up event for segment %d not recorded: %s", seg.index, e)
        if self.live:  # a file replay (eval, demo) has no service to report to
            self.write_status(seg)

    def keep_config(self) -> Config:
        """The config Phase Two's keeping runs with: while degraded no alternative memories are sampled (each costs
        a generation the writer has no time for); the keyframes are still kept."""
        if self.level == 0 or self.cfg.writer.candidate_share == 0:
            return self.cfg
        from edge_agent.config import replace

        return replace(self.cfg, "writer", candidate_share=0.0)

    def state(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "live": self.live, "level": self.level, "max_level": len(self.levels) - 1,
                "settings": self.settings.as_dict(), "queued": self._queued,
                "queue_age_s": round(self._queue_age, 3), "threshold_s": self.threshold, **self.counts}

    def write_status(self, seg: Segment | None = None, **extra: Any) -> None:
        """`<home>/run/status.json`, replaced atomically: what `service status` shows about the running writer."""
        status = {"pid": os.getpid(), "stream_id": self.stream_id, "source": self.source, "updated_at": time.time(),
                  "segment_index": None if seg is None else seg.index, "capture": self._stats, **self.state(), **extra}
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.status_path.with_name(f".{self.status_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(status, indent=1, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, self.status_path)
        except OSError as e:
            log.warning("status file %s not written: %s", self.status_path, e)


def read_status(cfg: Config) -> dict[str, Any] | None:
    """The last status the runner wrote, None when there is none (or it cannot be read)."""
    path = cfg.home / "run" / "status.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
