"""Keep-up: a slow scripted writer on a paced live source degrades step by step before any segment is dropped,
and recovers once it is fast again; each degraded segment is recorded and shown beside its memory."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edge_agent.capture.source import VideoSource
from edge_agent.config import load_config
from edge_agent.device.events import annotate_memories, events, summary_since
from edge_agent.device.keepup import KeepUp, Level, degrade, ladder, read_status
from edge_agent.runtime import Ingestor
from edge_agent.store import Store
from edge_agent.types import Frame, ImagePart, Segment
from edge_agent.vlm.fake import ScriptedBackend


class PacedCamera(VideoSource):
    """Live-like: frame n arrives n / fps seconds after connect; every frame looks different (no de-dup)."""

    kind = "paced"
    is_live = True

    def __init__(self, fps: float, size=(240, 320)) -> None:
        super().__init__("paced")
        self.fps = fps
        self.size = size

    def _connect(self):
        self.t0 = time.monotonic()

    def _grab(self):
        due = self.t0 + self.frames_grabbed / self.fps
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return self.frames_grabbed / self.fps

    def retrieve(self):
        return np.full((*self.size, 3), (self.frames_grabbed * 53) % 256, np.uint8)  # far from the last frame


def _cfg(tmp_path, **over):
    settings = {"capture.segment_seconds": 0.5, "capture.sample_fps": 8, "capture.keyframes_per_segment": 4,
                "capture.frame_size": 256, "capture.queue_segments": 6, "writer.candidate_share": 0.0,
                "writer.keep_frames_hours": 0, "keepup.max_queue_age_seconds": 1.0,
                "keepup.recover_after_segments": 2, "keepup.min_frame_size": 64,
                "writer.window_segments": 5, **over}  # the paper's window (the embedded default's profile: 1)
    return load_config(tmp_path / "home", environ={}, overrides=settings)


def test_ladder_halves_keyframes_then_frames_then_window():
    cfg = load_config("/nonexistent-home", environ={}, overrides={
        "capture.keyframes_per_segment": 4, "capture.frame_size": 448, "writer.window_segments": 5,
        "keepup.min_frame_size": 64})
    steps = ladder(cfg)
    assert steps[:4] == [Level(4, 448, 5), Level(2, 448, 5), Level(2, 224, 5), Level(2, 224, 3)]
    assert steps[-1] == Level(1, 64, 1)
    # each rung changes exactly one knob
    for a, b in zip(steps, steps[1:]):
        assert sum(x != y for x, y in zip(a.as_dict().values(), b.as_dict().values())) == 1


def test_degrade_picks_spread_keyframes_shrinks_and_cuts_the_window():
    frames = [Frame(i, i * 0.1, np.zeros((192, 256, 3), np.uint8)) for i in range(4)]
    seg = Segment(3, 30.0, 40.0, frames, frames_seen=8)
    out, window = degrade(seg, ["a", "b", "c", "d"], Level(2, 128, 3))
    assert [f.index for f in out.keyframes] == [0, 3]
    assert out.keyframes[0].image.shape == (96, 128, 3)
    assert window == ["c", "d"] and out.frames_seen == 8 and seg.keyframes == frames  # input untouched
    assert degrade(seg, ["a"], Level(1, 64, 1))[1] == []


def _new_segment_pixels(call) -> tuple[float, int]:
    """(share of the full-size new segment's pixels in this prompt, earlier segments in the window)."""
    parts = call.messages[-1].parts
    start = next(i for i, p in enumerate(parts) if isinstance(p, str) and p.startswith("New segment"))
    px = sum(p.pixels.shape[0] * p.pixels.shape[1] for p in parts[start:] if isinstance(p, ImagePart))
    earlier = sum(1 for p in parts if isinstance(p, str) and p.startswith("Earlier segment"))
    return px / (4 * 256 * 192), earlier


@pytest.mark.parametrize("keepup", [True, False])
def test_slow_writer_degrades_before_dropping_and_recovers(tmp_path, keepup):
    cfg = _cfg(tmp_path, **{"keepup.enabled": keepup})
    store = Store.open(cfg.db_path)
    state = {"slow_calls": 14}

    def reply(call):
        share, earlier = _new_segment_pixels(call)
        if state["slow_calls"] > 0:  # slower than real time at full settings, faster once degraded
            state["slow_calls"] -= 1
            time.sleep(0.75 * share + 0.07 * earlier)
        else:
            time.sleep(0.02)
        return json.dumps({"description": "I saw the grey wall."})

    t0 = time.time()
    with Ingestor("paced", store, ScriptedBackend(reply), cfg, source=PacedCamera(fps=16), live=True) as ing:
        ing.advance(until=16.0)
        state_after = ing.keepup.state()
        assert ing.report.as_dict()["keepup"] == state_after  # `run --json` shows it
    rows = events(store)
    summary = summary_since(store, t0 - 1)
    if not keepup:
        # the control: the same writer without keep-up falls behind until the queue drops segments
        assert summary["dropped_segments"] > 0 and summary["degraded_segments"] == 0
        return
    kinds = [r["kind"] for r in rows]
    assert "dropped" not in kinds, rows
    assert summary["degradations"] >= 2  # step by step: more than one rung down
    first_down = kinds.index("degraded")
    assert "recovered" in kinds[first_down:]
    assert state_after["level"] == 0 and state_after["dropped_segments"] == 0
    levels = [r["level"] for r in rows if r["kind"] == "degraded"]
    assert levels[0] == 1 and max(levels) >= 2
    # every degraded segment is a committed segment, and memories --json shows its settings
    seg_ids = {s["id"] for st in store.streams() for s in store.segments(st["id"])}
    assert all(r["segment_id"] in seg_ids for r in rows)
    mems = annotate_memories(store, store.memories())
    degraded = [m for m in mems if m["degradation"]]
    assert len(degraded) == summary["degraded_segments"]
    assert {"keyframes", "frame_size", "window_segments", "queue_age_s", "level"} <= set(degraded[0]["degradation"])
    assert any(m["degradation"] is None for m in mems)
    # the status file the service reads
    status = read_status(cfg)
    assert status["stream_id"] == ing.stream_id and status["level"] == 0 and status["live"] is True


def test_a_file_never_degrades(tmp_path):
    cfg = _cfg(tmp_path)
    store = Store.open(cfg.db_path)
    k = KeepUp(cfg, store, stream_id=1, live=False)
    seg = Segment(0, 0, 0.5, [Frame(0, 0, np.zeros((192, 256, 3), np.uint8))])
    out, _ = k.before(seg, [], {"queued": 4})
    assert out is seg and k.level == 0


def test_no_candidates_are_sampled_while_degraded(tmp_path):
    cfg = _cfg(tmp_path, **{"writer.candidate_share": 0.5})
    k = KeepUp(cfg, Store.open(cfg.db_path), stream_id=1, live=True)
    assert k.keep_config() is cfg
    seg = Segment(0, 0, 0.5, [Frame(i, i * 0.1, np.zeros((192, 256, 3), np.uint8)) for i in range(4)])
    out, _ = k.before(seg, [], {"queued": 3})
    assert k.level == 1 and len(out.keyframes) == 2
    assert k.keep_config().writer.candidate_share == 0.0 and k.keep_config().writer.keep_frames_hours == 0
