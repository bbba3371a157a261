"""Issue 13's fuzz run over video files: truncated, bit-flipped, garbage, wrong extension, huge frame, one frame.

Every case must end in segments or in a one-line SourceError, within a time bound, and never in any other
exception. Seeded, so a failing case can be replayed; the count is printed.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.capture import open_source, segment_stream
from edge_agent.config import CaptureConfig
from edge_agent.errors import SourceError

SEED = 13
CASE_SECONDS = 20.0


def clip(path: Path, n: int, size=(160, 96), fps=10.0, fourcc="mp4v") -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    rng = np.random.default_rng(0)
    for i in range(n):
        w.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    w.release()
    return path


def cases(tmp: Path):
    rng = random.Random(SEED)
    base = clip(tmp / "base.mp4", 40)
    avi = clip(tmp / "base.avi", 30, fourcc="MJPG")
    data, avi_data = base.read_bytes(), avi.read_bytes()
    for i in range(12):  # truncated at random points
        cut = rng.randrange(1, len(data))
        yield f"truncated-{cut}", data[:cut], ".mp4"
    for i in range(8):
        cut = rng.randrange(1, len(avi_data))
        yield f"truncated-avi-{cut}", avi_data[:cut], ".avi"
    for i in range(12):  # random bytes flipped
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 64)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        yield f"flipped-{i}", bytes(buf), ".mp4"
    for i in range(4):
        yield f"garbage-{i}", rng.randbytes(rng.randrange(1, 20000)), ".mp4"
    yield "empty", b"", ".mp4"
    yield "text", b"hello, this is not a video\n" * 20, ".mp4"
    yield "mp4-named-avi", data, ".avi"
    yield "avi-named-mp4", avi_data, ".mp4"
    yield "no-extension", data, ""
    ok, png = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))
    yield "png-named-mp4", png.tobytes(), ".mp4"
    yield "one-frame", clip(tmp / "one.mp4", 1).read_bytes(), ".mp4"
    yield "huge-frame", clip(tmp / "huge.mp4", 2, size=(3840, 2160)).read_bytes(), ".mp4"
    yield "header-only", data[:64], ".mp4"


def test_fuzzed_video_files_end_in_segments_or_a_one_line_source_error(tmp_path):
    cfg = CaptureConfig(segment_seconds=2.0)
    counts = {"cases": 0, "segments": 0, "refused": 0}
    for name, payload, ext in cases(tmp_path):
        path = tmp_path / f"case-{counts['cases']}{ext}"
        path.write_bytes(payload)
        counts["cases"] += 1
        t0 = time.monotonic()
        try:
            with open_source(path, cfg) as src:
                segs = list(segment_stream(src, cfg))
            counts["segments"] += 1
            assert all(s.keyframes for s in segs) or not segs, name
            assert all(s.t_end >= s.t_start for s in segs), name
        except SourceError as e:
            counts["refused"] += 1
            assert "\n" not in str(e) and (str(path) in str(e) or path.name in str(e)), (name, str(e))
        assert time.monotonic() - t0 < CASE_SECONDS, name
    print(f"\nvideo fuzz: {counts['cases']} files tried, {counts['segments']} segmented, "
          f"{counts['refused']} refused with a SourceError")
    assert counts["cases"] >= 40 and counts["segments"] and counts["refused"]
