"""The segmenter on real files: boundaries on the stream's clock, sampling, downscaling, de-duplication, resume."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.capture import VideoSource, open_source, segment_stream, target_size
from edge_agent.capture.segmenter import _Candidate, first_segment_index, select_keyframes
from edge_agent.config import CaptureConfig
from edge_agent.errors import SourceError
from edge_agent.synth import generate
from edge_agent.types import Frame


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 45 s synthetic clip at 5 fps: segments 0-3 full, segment 4 half (40-45 s)."""
    return generate(2, 0.75, tmp_path_factory.mktemp("synth")).video


def segments(path, cfg, start_after=0.0):
    with open_source(path) as src:
        return list(segment_stream(src, cfg, start_after))


def test_target_size_keeps_aspect_in_multiples_of_32():
    assert target_size(256, 192, 128) == (128, 96)
    assert target_size(640, 480, 448) == (448, 320)  # 336 rounds to 320
    assert target_size(1920, 1080, 128) == (128, 64)
    assert target_size(480, 640, 128) == (96, 128)  # portrait
    assert target_size(100, 80, 128) == (96, 64)  # never upscaled past the source
    assert target_size(20, 10, 128) == (32, 32)  # at least one merged patch
    for w, h in [(256, 192), (1280, 720), (333, 777)]:
        tw, th = target_size(w, h, 256)
        assert tw % 32 == 0 and th % 32 == 0 and max(tw, th) <= 256


def test_segments_on_the_file_clock(clip):
    cfg = CaptureConfig(segment_seconds=10, sample_fps=2, keyframes_per_segment=4, frame_size=128)
    segs = segments(clip, cfg)
    assert [s.index for s in segs] == [0, 1, 2, 3, 4]
    assert [(s.t_start, s.t_end) for s in segs[:4]] == [(0, 10), (10, 20), (20, 30), (30, 40)]
    assert segs[4].t_start == 40 and segs[4].t_end == pytest.approx(45.0)  # last partial segment, to its end
    assert [s.frames_seen for s in segs] == [20, 20, 20, 20, 10]  # 2 frames/s sampled of 5
    for s in segs:
        assert 1 <= len(s.keyframes) <= 4
        assert s.frames_merged <= s.frames_seen - len(s.keyframes)
        assert s.frames_dropped == 0
        ts = [f.t for f in s.keyframes]
        assert ts == sorted(ts) and all(s.t_start <= t < s.t_end for t in ts)
        for f in s.keyframes:
            assert f.image.shape == (96, 128, 3) and f.image.dtype == np.uint8
            assert f.t == pytest.approx(f.index / 5.0)  # frame numbers and times agree


def test_sampling_rate_and_segment_length_follow_the_config(clip):
    cfg = CaptureConfig(segment_seconds=5, sample_fps=1, keyframes_per_segment=2, frame_size=64,
                        scene_change_threshold=0.0)
    segs = segments(clip, cfg)
    assert len(segs) == 9 and segs[-1].t_end == pytest.approx(45.0)
    assert all(s.frames_seen == 5 for s in segs)
    assert all(len(s.keyframes) == 2 for s in segs)  # nothing merged at threshold 0; capped at 2
    assert segs[0].keyframes[0].image.shape == (64, 64, 3)  # 64 x 48 -> 64 x 64 (multiples of 32)


def test_static_scene_is_merged(tmp_path):
    path = tmp_path / "static.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    still = np.full((120, 160, 3), 90, np.uint8)
    cv2.circle(still, (80, 60), 30, (0, 200, 0), -1)
    for i in range(120):  # 12 s: 8 s still, then a different scene
        w.write(still if i < 80 else np.full((120, 160, 3), 230, np.uint8))
    w.release()
    cfg = CaptureConfig(segment_seconds=10, sample_fps=2, keyframes_per_segment=4)
    s0, s1 = segments(path, cfg)
    assert s0.frames_seen == 20
    # 16 still frames fold into the first; the scene change at 8 s is a keyframe, its 3 repeats fold into it
    assert len(s0.keyframes) == 2 and s0.frames_merged == 18
    assert [f.t for f in s0.keyframes] == pytest.approx([0.0, 8.0])
    # every segment keeps at least one frame, even when it looks like the previous one
    assert s1.frames_seen == 4 and len(s1.keyframes) == 1 and s1.frames_merged == 3


def test_keyframes_are_spread_and_prefer_big_changes():
    def cand(t, score):
        return _Candidate(Frame(index=int(t * 10), t=t, image=np.zeros((32, 32, 3), np.uint8)), score)

    cands = [cand(0.0, 1.0), cand(1.0, 0.2), cand(2.0, 0.9), cand(3.0, 0.1), cand(6.0, 0.3), cand(7.0, 0.8),
             cand(9.0, 0.5)]
    kept = select_keyframes(cands, 3, 0.0, 10.0)
    # bins [0, 3.3), [3.3, 6.7), [6.7, 10): the best of each bin
    assert [c.frame.t for c in kept] == [0.0, 6.0, 7.0]
    # an empty bin's slot goes to the biggest change left
    kept = select_keyframes([cand(0.0, 1.0), cand(1.0, 0.2), cand(2.0, 0.9), cand(9.0, 0.5)], 3, 0.0, 10.0)
    assert [c.frame.t for c in kept] == [0.0, 2.0, 9.0]
    assert select_keyframes(cands[:2], 3, 0.0, 10.0) == cands[:2]


def test_resume_skips_committed_segments(clip):
    cfg = CaptureConfig(segment_seconds=10)
    full = segments(clip, cfg)
    resumed = segments(clip, cfg, start_after=20.0)
    assert [s.index for s in resumed] == [2, 3, 4]
    for a, b in zip(full[2:], resumed):
        assert (a.t_start, a.t_end, a.frames_seen) == (b.t_start, b.t_end, b.frames_seen)
        assert [f.index for f in a.keyframes] == [f.index for f in b.keyframes]
    # mid-segment resume points skip the partly covered segment as well
    assert [s.index for s in segments(clip, cfg, start_after=25.0)] == [3, 4]
    assert segments(clip, cfg, start_after=60.0) == []
    assert first_segment_index(0.0, 10) == 0 and first_segment_index(10.0, 10) == 1
    assert first_segment_index(10.0000001, 10) == 1 and first_segment_index(10.5, 10) == 2


def test_resume_seeks_instead_of_decoding(clip):
    cfg = CaptureConfig(segment_seconds=10)
    with open_source(clip) as src:
        list(segment_stream(src, cfg, start_after=30.0))
        assert src.frames_grabbed <= 75 + 10  # 30-45 s at 5 fps, plus 1 s of seek margin and slack


class FakeLive(VideoSource):
    """A live source on its own clock that fails after `n` frames."""

    kind = "fake"
    is_live = True

    def __init__(self, n: int, fps: float = 10.0) -> None:
        super().__init__("fake")
        self.n, self.fps = n, fps

    def _connect(self):
        pass

    def _grab(self):
        if self.frames_grabbed >= self.n:
            raise SourceError("fake: stopped delivering frames")
        return self.frames_grabbed / self.fps

    def retrieve(self):
        return np.full((48, 64, 3), (self.frames_grabbed * 37) % 256, np.uint8)


def test_live_failure_emits_the_segment_in_progress_then_raises():
    cfg = CaptureConfig(segment_seconds=1.0, sample_fps=10, keyframes_per_segment=2)
    got = []
    with pytest.raises(SourceError, match="stopped delivering"):
        for s in segment_stream(FakeLive(25), cfg):
            got.append(s)
    assert [s.index for s in got] == [0, 1, 2]
    assert [s.frames_seen for s in got] == [10, 10, 5]
    assert got[2].t_end == pytest.approx(2.5)
