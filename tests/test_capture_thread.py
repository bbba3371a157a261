"""The capture thread: keep-newest queue for live sources (never blocks, drops counted), blocking for files."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_agent.capture import CaptureThread, VideoSource, open_source
from edge_agent.config import CaptureConfig
from edge_agent.errors import SourceError
from edge_agent.synth import generate


class PacedLive(VideoSource):
    """A live-like source on its own clock: frame n arrives at n / fps seconds after connect, not earlier.

    It records the wall-clock time of every grab, so a test can see whether the reader was ever held up.
    """

    kind = "paced"
    is_live = True

    def __init__(self, n_frames: int, fps: float, fail_at_end: bool = False) -> None:
        super().__init__("paced")
        self.n, self.fps, self.fail_at_end = n_frames, fps, fail_at_end
        self.grab_times: list[float] = []
        self.late: list[float] = []  # how late each frame was taken, seconds

    def _connect(self):
        self.t0 = time.monotonic()

    def _grab(self):
        i = self.frames_grabbed
        if i >= self.n:
            if self.fail_at_end:
                raise SourceError("paced: stopped delivering frames")
            return None
        due = self.t0 + i / self.fps
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        self.late.append(max(0.0, time.monotonic() - due))
        self.grab_times.append(time.monotonic())
        return i / self.fps

    def retrieve(self):
        rng = np.random.default_rng(self.frames_grabbed)  # every frame different: nothing merges
        return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


CFG = CaptureConfig(segment_seconds=0.25, sample_fps=20, keyframes_per_segment=2, queue_segments=2)
FAST = CaptureConfig(segment_seconds=0.025, sample_fps=200, keyframes_per_segment=2, queue_segments=2)  # 200 fps


def test_slow_consumer_never_blocks_a_live_source_and_drops_are_counted():
    src = PacedLive(n_frames=60, fps=20)  # 3 s of video, 5 frames per 0.25 s segment
    delivered = []
    with CaptureThread(src, CFG) as capture:
        assert capture.drop_oldest  # live default
        for seg in capture:
            delivered.append(seg)
            time.sleep(0.4)  # the writer takes 0.4 s for a 0.25 s segment
    assert src.frames_grabbed == 60
    # the camera kept its pace: no frame was taken much later than it arrived
    assert max(src.late) < 0.25, max(src.late)  # blocked behind the writer: ~0.65 s late
    stats = capture.stats()
    assert stats["segments_captured"] == 12
    assert stats["segments_dropped"] > 0
    assert stats["segments_delivered"] + stats["segments_dropped"] == 12
    # every sampled frame is accounted for: delivered, or dropped and reported on a later segment
    assert sum(s.frames_seen for s in delivered) + capture.frames_dropped == 60
    assert sum(s.frames_dropped for s in delivered) == capture.frames_dropped
    # keep-newest: the last segment always arrives, and delivered ones are in order
    idx = [s.index for s in delivered]
    assert idx == sorted(idx) and idx[-1] == 11


def test_file_source_blocks_instead_of_dropping(tmp_path):
    video = generate(4, 0.5, tmp_path).video  # 30 s
    cfg = CaptureConfig(segment_seconds=5, queue_segments=1)
    with open_source(video, cfg) as src:
        with CaptureThread(src, cfg) as capture:
            assert not capture.drop_oldest
            segs = []
            for seg in capture:
                segs.append(seg)
                time.sleep(0.05)
    assert [s.index for s in segs] == [0, 1, 2, 3, 4, 5]
    assert capture.segments_dropped == 0 and all(s.frames_dropped == 0 for s in segs)


def test_drop_policy_is_a_parameter():
    src = PacedLive(n_frames=40, fps=200)  # blocking queue: nothing lost, whatever the consumer's pace
    with CaptureThread(src, FAST, drop_oldest=False) as capture:
        segs = []
        for seg in capture:
            segs.append(seg)
            time.sleep(0.02)
    assert [s.index for s in segs] == list(range(8)) and capture.segments_dropped == 0
    assert all(s.frames_seen == 5 for s in segs)


def test_reader_error_reaches_the_consumer_after_the_queued_segments():
    src = PacedLive(n_frames=12, fps=200, fail_at_end=True)
    got = []
    capture = CaptureThread(src, FAST, drop_oldest=False)
    with pytest.raises(SourceError, match="stopped delivering"):
        for seg in capture:
            got.append(seg)
            time.sleep(0.05)  # the reader fails while segments still wait in the queue
    # 12 frames = 2 full segments + the partial third emitted before the error
    assert [s.index for s in got] == [0, 1, 2]
    assert got[-1].frames_seen == 2
    assert capture.join(2.0)


def test_stop_ends_a_live_capture_promptly():
    src = PacedLive(n_frames=10_000, fps=50)
    capture = CaptureThread(src, CFG).start()
    first = capture.get(timeout=5.0)
    assert first is not None and first.index == 0
    capture.stop()
    assert capture.join(2.0)
    assert not capture.running
    rest = list(capture)  # what was queued is still delivered, then the iteration ends
    assert len(rest) <= CFG.queue_segments
    assert src.frames_grabbed < 10_000


def test_resume_point_is_passed_to_the_segmenter():
    cfg = CaptureConfig(segment_seconds=0.1, sample_fps=100, queue_segments=2)
    src = PacedLive(n_frames=50, fps=100)  # 0.5 s: segments 0-4 of 10 frames
    with CaptureThread(src, cfg, start_after=0.15, drop_oldest=False) as capture:
        segs = list(capture)
    assert [s.index for s in segs] == [2, 3, 4]  # 0 and 1 start before 0.15 s: already committed
    assert [s.frames_seen for s in segs] == [10, 10, 10]


def test_get_times_out_without_segments():
    gate = threading.Event()

    class Stalled(PacedLive):
        def _grab(self):
            gate.wait(5.0)
            return None

    capture = CaptureThread(Stalled(1, 1.0), CFG).start()
    t = time.monotonic()
    assert capture.get(timeout=0.1) is None
    assert time.monotonic() - t < 1.0
    gate.set()
    assert capture.join(2.0)
