"""The capture thread: runs the segmenter on its own thread and hands segments over a bounded keep-newest queue.

A slow memory writer must never back up a camera (NanoLLM's keep-newest input; lerobot's reader thread): when
the queue is full the OLDEST waiting segment is dropped, and the frames it held are counted into
`frames_dropped` of the next segment the consumer receives, so the store records every loss. A file has no
real-time constraint, so for files the queue blocks the reader instead and nothing is dropped.

    with CaptureThread(source, cfg) as capture:
        for segment in capture:      # re-raises the reader's exception after the queued segments
            write(segment)
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from edge_agent.config import CaptureConfig
from edge_agent.types import Segment

from edge_agent.capture.segmenter import segment_stream
from edge_agent.capture.source import VideoSource

log = logging.getLogger(__name__)


class CaptureThread:
    """Reader thread + bounded queue of Segments.

    `drop_oldest` (default: `source.is_live`): True keeps the newest `cfg.queue_segments` segments and never
    blocks the reader; False blocks the reader while the queue is full (files: no segment is ever lost).
    Counters (read any time): segments_captured, segments_delivered, segments_dropped, frames_dropped.
    The source is connected by the reader if needed but never closed here: the caller owns it (close it after
    `stop()` + `join()`).
    """

    def __init__(self, source: VideoSource, cfg: CaptureConfig, *, start_after: float = 0.0,
                 drop_oldest: bool | None = None, name: str = "edge-agent-capture") -> None:
        self.source = source
        self.cfg = cfg
        self.start_after = start_after
        self.drop_oldest = source.is_live if drop_oldest is None else drop_oldest
        self.maxsize = cfg.queue_segments
        self._queue: deque[Segment] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False  # the reader has finished (end of stream, stop, or error)
        self._error: BaseException | None = None
        self._pending_dropped = 0  # frames of dropped segments not yet attached to a delivered one
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self.segments_captured = 0
        self.segments_delivered = 0
        self.segments_dropped = 0
        self.frames_dropped = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> "CaptureThread":
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the reader to finish after the current frame; wakes a reader blocked on a full queue."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the reader thread; True when it has ended."""
        if self._started:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        return self._started and self._thread.is_alive()

    def __enter__(self) -> "CaptureThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.join()

    # -- reader side -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            for segment in segment_stream(self.source, self.cfg, self.start_after, should_stop=self._stop.is_set):
                self._put(segment)
                if self._stop.is_set():
                    break
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._error = e
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _put(self, segment: Segment) -> None:
        with self._cond:
            self.segments_captured += 1
            if self.drop_oldest:
                while len(self._queue) >= self.maxsize:
                    old = self._queue.popleft()
                    lost = old.frames_seen + old.frames_dropped  # its own frames and losses carried into it
                    self.segments_dropped += 1
                    self.frames_dropped += old.frames_seen
                    self._pending_dropped += lost
                    log.warning("capture queue full: dropped segment %d (%d frames)", old.index, old.frames_seen)
            else:
                while len(self._queue) >= self.maxsize and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
            self._queue.append(segment)
            self._cond.notify_all()

    # -- consumer side ---------------------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Segment | None:
        """The oldest waiting segment; None when the reader has finished and the queue is empty (or on timeout).

        Raises the reader's exception once the segments captured before it have all been delivered.
        """
        self.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue or self._done, timeout):
                return None
            if self._queue:
                segment = self._queue.popleft()
                segment.frames_dropped += self._pending_dropped
                self._pending_dropped = 0
                self.segments_delivered += 1
                self._cond.notify_all()
                return segment
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            return None

    def __iter__(self) -> Iterator[Segment]:
        while True:
            segment = self.get()
            if segment is None:
                return
            yield segment

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"segments_captured": self.segments_captured, "segments_delivered": self.segments_delivered,
                    "segments_dropped": self.segments_dropped, "frames_dropped": self.frames_dropped,
                    "queued": len(self._queue)}
