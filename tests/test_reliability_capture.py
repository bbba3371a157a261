"""Issue 13, items 4, 5, 7 and 8 at capture: real start times for files, finite http(s) files, still images,
a camera that vanishes and comes back mid-run."""

from __future__ import annotations

import functools
import http.server
import json
import os
import struct
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.capture.source import (
    MP4_EPOCH_OFFSET,
    OpenCVSource,
    file_start_time,
    mp4_header_times,
    open_source,
)
from edge_agent.config import CaptureConfig, load_config, replace
from edge_agent.errors import SourceError
from edge_agent.runtime import ingest
from edge_agent.store import Store
from edge_agent.vlm.fake import ScriptedBackend


def write_clip(path: Path, seconds: float, fps: float = 10.0, size=(96, 64)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(int(seconds * fps)):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:, : (i * 7) % size[0]] = (40 + i % 200, 90, 200)
        w.write(frame)
    w.release()
    return path


def set_mp4_creation_time(path: Path, epoch: float) -> None:
    """Write a recorder's creation time into the file's `mvhd` (version 0: seconds since 1904)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"mvhd") + 4
    assert data[at] == 0  # version 0: 4-byte times
    data[at + 4: at + 8] = struct.pack(">I", int(epoch) + MP4_EPOCH_OFFSET)
    path.write_bytes(bytes(data))


# -- item 4: a file's stream gets a real start time ----------------------------------------------------------
def test_file_start_time_is_mtime_minus_duration_without_a_recorded_time(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", 4.0)
    created, duration = mp4_header_times(clip)
    assert created is None and duration == pytest.approx(4.0, abs=0.2)  # OpenCV's muxer records no date
    mtime = 1_750_000_000.0
    os.utime(clip, (mtime, mtime))
    start, how = file_start_time(clip)
    assert start == pytest.approx(mtime - 4.0, abs=0.2) and "modification" in how


def test_file_start_time_prefers_the_containers_creation_time(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", 2.0)
    set_mp4_creation_time(clip, 1_600_000_123)
    assert open_source(clip).duration == pytest.approx(2.0, abs=0.2)  # still a valid video
    start, how = file_start_time(clip)
    assert start == 1_600_000_123 and "creation" in how


def test_garbage_has_no_header_times(tmp_path):
    junk = tmp_path / "j.mp4"
    junk.write_bytes(os.urandom(5000))
    assert mp4_header_times(junk) == (None, None)
    assert mp4_header_times(tmp_path / "missing.mp4") == (None, None)


def test_run_on_a_file_stamps_memories_with_wall_clock_time(tmp_path, tiny_model):
    from conftest import run_cli

    clip = write_clip(tmp_path / "walk.mp4", 10.0)
    hour_ago = time.time() - 3600
    os.utime(clip, (hour_ago, hour_ago))
    home = tmp_path / "home"
    proc = run_cli(home, "run", str(clip), "--json", model=tiny_model, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    store = Store.open(home / "memory.db")
    origin = store.streams()[0]["origin"]
    assert origin == pytest.approx(hour_ago - 10.0, abs=1.0)  # not 1970
    seg = store.segments(store.streams()[0]["id"])[0]
    assert seg["t_start"] == 0.0  # segments keep stream seconds
    # --start overrides, on a new file: memories --since/forget --since find what they should
    other = write_clip(tmp_path / "other.mp4", 10.0)
    proc = run_cli(home, "run", str(other), "--start", "30m", "--json", model=tiny_model, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    origins = sorted(s["origin"] for s in Store.open(home / "memory.db").streams())
    assert origins[1] == pytest.approx(time.time() - 1800, abs=60)
    listed = run_cli(home, "memories", "--since", "45m", "--json")
    written = [m for m in Store.open(home / "memory.db").memories() if m["t_start"] >= origins[1] - 1]
    assert len(json.loads(listed.stdout)) == len(written)
    gone = json.loads(run_cli(home, "forget", "--since", "2h", "--json").stdout)
    assert gone["segments"] == 2 and gone["scrubbed"] is True


def test_replays_keep_stream_time(tmp_path):
    cfg = replace(load_config(tmp_path / "home", environ={}), "writer", candidate_share=0.0)
    clip = write_clip(tmp_path / "c.mp4", 10.0)
    os.utime(clip, (1_750_000_000, 1_750_000_000))
    store = Store.open(cfg.db_path)
    ingest(str(clip), store, ScriptedBackend(lambda call: json.dumps({"description": "I walk."})), cfg, origin=0.0)
    assert store.memories()[0]["t_start"] == 0.0


# -- item 5: an http(s) URL of a finite file is read like a file ---------------------------------------------
@pytest.fixture
def http_server(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_finite_http_file_is_ingested_like_a_file(tmp_path, http_server):
    write_clip(tmp_path / "clip.mp4", 3.0)
    src = open_source(f"{http_server}/clip.mp4", CaptureConfig(reconnect_attempts=3, reconnect_backoff_seconds=0.1))
    t0 = time.monotonic()
    times = []
    with src:
        assert src.kind == "url" and not src.is_live
        assert src.duration == pytest.approx(3.0, abs=0.2)
        while (t := src.grab()) is not None:
            times.append(t)
            assert time.monotonic() - t0 < 30
    assert len(times) == 30 and src.reconnects == 0  # every frame once, no reconnect loop
    assert times[-1] == pytest.approx(2.9, abs=0.05)  # container time, not wall clock


# -- item 7: a still image is not a video -----------------------------------------------------------------------
@pytest.mark.parametrize("ext,name", [(".png", "PNG"), (".jpg", "JPEG"), (".bmp", "BMP")])
def test_a_still_image_is_refused(tmp_path, ext, name):
    path = tmp_path / f"still{ext}"
    cv2.imwrite(str(path), np.full((64, 64, 3), 90, np.uint8))
    with pytest.raises(SourceError, match=f"still image \\({name}\\)"):
        open_source(path)


# -- item 8: the camera vanishes mid-run and comes back ----------------------------------------------------------
class SlowCap:
    """A cv2.VideoCapture stand-in delivering `frames` frames 10 ms apart (a 100 fps camera), then nothing."""

    def __init__(self, frames: int = 0, opens: bool = True):
        self.left, self.opens, self.i = frames, opens, 0

    def isOpened(self):  # noqa: N802
        return self.opens

    def grab(self):
        if self.opens and self.left > 0:
            time.sleep(0.01)
            self.left -= 1
            self.i += 1
            return True
        return False

    def retrieve(self):
        img = np.zeros((64, 96, 3), np.uint8)
        img[:, : self.i % 96] = 200
        return True, img

    def get(self, prop):
        return 100.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop, value):
        return False

    def release(self):
        pass


class VanishingCamera(OpenCVSource):
    def __init__(self, caps, cfg):
        super().__init__("7", "camera", 7, cfg, sleep=time.sleep)
        self.caps = list(caps)

    def _make_capture(self):
        return self.caps.pop(0) if self.caps else SlowCap(opens=False)


def test_a_camera_that_vanishes_and_comes_back_keeps_writing(tmp_path):
    cfg = load_config(tmp_path / "home", environ={})
    cfg = replace(cfg, "writer", candidate_share=0.0, keep_frames_hours=0.0)
    cfg = replace(cfg, "capture", segment_seconds=0.5, sample_fps=20.0, reconnect_attempts=3,
                  reconnect_backoff_seconds=0.05)
    # 1.2 s of frames, the device gone for two reopen attempts, back for 1.2 s, then gone for good
    cam = VanishingCamera([SlowCap(120), SlowCap(opens=False), SlowCap(120)], cfg.capture)
    cam.connect()
    store = Store.open(cfg.db_path)
    from edge_agent.runtime import Ingestor

    with Ingestor("7", store, ScriptedBackend(lambda c: json.dumps({"description": "I see a wall."})), cfg,
                  source=cam, live=False) as ing:
        with pytest.raises(SourceError, match="stopped delivering"):
            ing.advance()
    assert cam.reconnects == 1
    segs = store.segments(ing.stream_id)
    assert len(segs) >= 3 and all(s["status"] == "written" for s in segs)
    assert max(s["t_end"] for s in segs) > 2.0  # segments after the outage, on one clock
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
