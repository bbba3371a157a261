"""Video sources on real files (a synthetic clip and hand-made broken ones), bad devices and URLs, reconnects."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.capture import open_source, parse_spec
from edge_agent.capture.source import OpenCVSource
from edge_agent.config import CaptureConfig
from edge_agent.errors import SourceError
from edge_agent.synth import generate


def write_clip(path: Path, n: int, fps: float = 10.0, fourcc: str = "mp4v", size=(160, 120)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert w.isOpened()
    for i in range(n):
        img = np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8)
        cv2.putText(img, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 255), 2)
        w.write(img)
    w.release()
    return path


@pytest.fixture(scope="module")
def synth_clip(tmp_path_factory) -> Path:
    return generate(5, 0.5, tmp_path_factory.mktemp("synth")).video


def test_parse_spec_kinds(tmp_path):
    assert parse_spec("0") == ("camera", 0)
    assert parse_spec(" 12 ") == ("camera", 12)
    assert parse_spec("/dev/video2") == ("camera", "/dev/video2")
    assert parse_spec("rtsp://cam.local/live") == ("url", "rtsp://cam.local/live")
    assert parse_spec("HTTPS://x/y.mjpg")[0] == "url"
    assert parse_spec(str(tmp_path / "a.mp4")) == ("file", str(tmp_path / "a.mp4"))
    with pytest.raises(SourceError, match="unsupported URL scheme"):
        parse_spec("ftp://host/clip.mp4")
    with pytest.raises(SourceError, match="empty"):
        parse_spec("  ")


def test_file_source_reads_stream_timestamps(synth_clip):
    with open_source(synth_clip) as src:
        assert src.kind == "file" and not src.is_live
        assert src.fps == pytest.approx(5.0)
        assert src.duration == pytest.approx(30.0)
        times = []
        while (t := src.grab()) is not None:
            times.append(t)
        assert len(times) == 150
        assert times[:3] == pytest.approx([0.0, 0.2, 0.4])
        assert times[-1] == pytest.approx(29.8)
        assert not src.truncated and src.end_note is None
    assert not src.connected
    # read() gives full-size RGB frames numbered from 0
    with open_source(synth_clip) as src:
        f0, f1 = src.read(), src.read()
        assert (f0.index, f1.index) == (0, 1)
        assert f1.t == pytest.approx(0.2)
        assert f0.image.shape == (192, 256, 3) and f0.image.dtype == np.uint8


def test_read_is_rgb(tmp_path):
    path = tmp_path / "red.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for _ in range(3):
        w.write(np.full((64, 64, 3), (0, 0, 255), np.uint8))  # pure red in OpenCV's BGR
    w.release()
    with open_source(path) as src:
        r, g, b = src.read().image[32, 32].astype(int)
    assert r > 200 and g < 50 and b < 50


def test_seek_lands_on_the_requested_time(synth_clip):
    with open_source(synth_clip) as src:
        assert src.seek(20.0)
        t = src.grab()
        assert t == pytest.approx(20.0)
        assert src.frame_index == 100


def test_missing_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match=r"video file '.*nope\.mp4': no such file"):
        open_source(path)


def test_zero_length_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.mp4': file is empty \(0 bytes\)"):
        open_source(path)


def test_folder_is_not_a_video(tmp_path):
    with pytest.raises(SourceError, match="is a folder"):
        open_source(tmp_path)


def test_random_bytes_are_not_a_video(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match=r"noise\.mp4': cannot be opened as a video"):
        open_source(path)


def test_text_file_is_not_a_video(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not a video\n" * 100)
    with pytest.raises(SourceError, match=r"notes\.txt': is a text file, not a video"):
        open_source(path)


def test_truncated_mp4_without_its_index(synth_clip, tmp_path):
    # OpenCV's mp4 writer puts the index (moov) at the end: cutting the file loses it.
    data = synth_clip.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"cut\.mp4': cannot be opened .*truncated"):
        open_source(path)


def test_truncated_avi_reads_what_decodes_then_reports(tmp_path):
    full = write_clip(tmp_path / "full.avi", 100, fourcc="MJPG")
    data = full.read_bytes()
    path = tmp_path / "half.avi"
    path.write_bytes(data[: len(data) // 2])
    with open_source(path) as src:
        assert src.duration == pytest.approx(10.0)  # what the header promises
        n = 0
        while src.grab() is not None:
            n += 1
        assert 20 < n < 100
        assert src.truncated
        assert "half.avi" in src.end_note and "truncated" in src.end_note and f"{n} decodable" in src.end_note
        assert src.grab() is None  # stays ended, no exception


def test_camera_index_that_does_not_exist_fails_fast():
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"camera 9: no such camera"):
        open_source("9")
    assert time.monotonic() - start < 5.0


def test_unreachable_url_fails_fast():
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"stream 'rtsp://127\.0\.0\.1:1/x': cannot connect"):
        open_source("rtsp://127.0.0.1:1/x", open_timeout_s=2.0)
    assert time.monotonic() - start < 10.0


def test_grab_before_connect_names_the_source(synth_clip):
    src = open_source(synth_clip, connect=False)
    with pytest.raises(SourceError, match="not connected"):
        src.grab()


# -- live reconnects, with a stand-in for cv2.VideoCapture ------------------------------------------------
class FakeCap:
    """Behaves like cv2.VideoCapture: opens or not, then delivers `frames` frames and stops."""

    def __init__(self, opens: bool = True, frames: int = 0) -> None:
        self.opens, self.left = opens, frames
        self.released = False

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.opens

    def grab(self):
        if self.opens and self.left > 0:
            self.left -= 1
            return True
        return False

    def retrieve(self):
        return True, np.zeros((48, 64, 3), np.uint8)

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop, value):
        return False

    def release(self):
        self.released = True


class ScriptedCamera(OpenCVSource):
    def __init__(self, caps, cfg):
        self.waits: list[float] = []
        super().__init__("7", "camera", 7, cfg, sleep=self.waits.append)
        self.caps = list(caps)

    def _make_capture(self):
        return self.caps.pop(0)


def test_live_source_reconnects_with_exponential_backoff():
    cfg = CaptureConfig(reconnect_attempts=4, reconnect_backoff_seconds=0.5)
    # first capture gives 3 frames, then two reopen attempts fail, the third reopens and gives 2 more
    cam = ScriptedCamera([FakeCap(frames=3), FakeCap(opens=False), FakeCap(opens=False), FakeCap(frames=2),
                          FakeCap(opens=False), FakeCap(opens=False), FakeCap(opens=False), FakeCap(opens=False)],
                         cfg)
    with cam:
        assert cam.is_live
        times = [cam.grab() for _ in range(5)]
        assert all(t is not None for t in times) and times == sorted(times)  # one clock across the reconnect
        assert cam.waits == [0.5, 1.0, 2.0]
        assert cam.reconnects == 1
        with pytest.raises(SourceError, match=r"camera 7: stopped delivering frames; 4 reconnect attempts over 7\.5 s"):
            cam.grab()
        assert cam.waits[3:] == [0.5, 1.0, 2.0, 4.0]  # backoff restarts for a new stall


def test_no_reconnect_when_attempts_is_zero():
    cam = ScriptedCamera([FakeCap(frames=1)], CaptureConfig(reconnect_attempts=0))
    with cam:
        assert cam.grab() is not None
        with pytest.raises(SourceError, match="0 reconnect attempts"):
            cam.grab()
        assert cam.waits == []
