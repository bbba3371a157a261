"""The ingest path (capture -> writer -> store) around a scripted model: memories, times, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import load_config, replace
from edge_agent.runtime import Ingestor, ingest
from edge_agent.store import Store
from edge_agent.types import ImagePart
from edge_agent.vlm.fake import ScriptedBackend


def write_clip(path: Path, seconds: float, fps: int = 5) -> Path:
    """A clip whose colour changes every 5 s, so every segment has distinct keyframes."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (96, 64))
    for i in range(int(seconds * fps)):
        img = np.zeros((64, 96, 3), np.uint8)
        img[:] = ((i // (5 * fps)) * 40 % 255, 80, 200 - (i // (5 * fps)) * 30 % 200)
        cv2.circle(img, (10 + i % 70, 32), 8, (255, 255, 255), -1)
        w.write(img)
    w.release()
    return path


def numbered_memories(call):
    """Reply with the new segment's start clock, so each memory names its own segment."""
    clock = call.prompt.rsplit("New segment ", 1)[1].split("-", 1)[0]
    return json.dumps({"description": f"I was in the kitchen at {clock}."})


@pytest.fixture
def cfg(tmp_path):
    c = load_config(tmp_path / "home", environ={})
    # every backend call below is a segment's memory; the paper's window (k=5), so the tests see earlier segments
    c = replace(c, "writer", candidate_share=0.0, window_segments=5)
    return replace(c, "capture", sample_fps=2.0)


def test_ingest_writes_one_memory_per_segment_with_stream_times(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 35)
    store = Store.open(cfg.db_path)
    backend = ScriptedBackend(numbered_memories)
    report = ingest(str(clip), store, backend, cfg)

    assert (report.segments_written, report.segments_failed, report.error) == (4, 0, None)
    rows = store.memories()
    assert [(m["t_start"], m["t_end"]) for m in rows] == [(0, 10), (10, 20), (20, 30), (30, pytest.approx(35, abs=0.3))]
    assert rows[2]["text"] == "I was in the kitchen at 00:00:20."
    assert rows[0]["writer_model"] == "scripted"
    # the third segment's prompt shows the two earlier memories (window k=5)
    assert "00:00:00." in backend.calls[2].prompt and "00:00:10." in backend.calls[2].prompt


def test_the_embedded_defaults_profile_writes_each_segment_from_its_own_frames_alone(tmp_path):
    cfg = replace(load_config(tmp_path / "home", environ={}), "capture", sample_fps=2.0)
    assert cfg.writer.window_segments == 1 and cfg.sources["writer.window_segments"].endswith("manifest.json")
    clip = write_clip(tmp_path / "clip.mp4", 35)
    backend = ScriptedBackend(numbered_memories)
    report = ingest(str(clip), Store.open(cfg.db_path), backend, replace(cfg, "writer", candidate_share=0.0))

    assert report.segments_written == 4 and len(backend.calls) == 4
    for i, call in enumerate(backend.calls):
        keys = [p.key for m in call.messages for p in m.parts if isinstance(p, ImagePart)]
        assert keys and {k.split("/")[-2] for k in keys} == {str(i)}  # <stream>/<segment index>/<frame index>
        assert "Earlier segment" not in call.prompt and "I was in the kitchen" not in call.prompt


def test_advance_stops_at_the_requested_stream_time_and_continues(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 40)
    store = Store.open(cfg.db_path)
    with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg) as ing:
        ing.advance(until=25)
        assert [m["t_end"] for m in store.memories()] == [10, 20]
        ing.advance(until=None)
        assert ing.exhausted
    assert len(store.memories()) == 4


def test_failed_segments_are_recorded_not_dropped(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 20)
    store = Store.open(cfg.db_path)
    report = ingest(str(clip), store, ScriptedBackend(lambda call: "nonsense"), cfg)
    assert (report.segments_written, report.segments_failed) == (0, 2)
    segs = store.segments(report.stream_id)
    assert [s["status"] for s in segs] == ["failed", "failed"]
    assert "not JSON" in segs[0]["failure"]


def test_rerun_of_the_same_file_writes_nothing_twice(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 30)
    store = Store.open(cfg.db_path)
    ingest(str(clip), store, ScriptedBackend(numbered_memories), cfg)
    again = ingest(str(clip), store, ScriptedBackend(numbered_memories), cfg)
    assert again.segments_written == 0 and len(store.memories()) == 3


def test_sigkill_during_ingest_then_resume_loses_nothing_committed(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 80)
    child = textwrap.dedent(f"""
        import json, time, sys
        from edge_agent.config import load_config, replace
        from edge_agent.runtime import ingest
        from edge_agent.store import Store
        from edge_agent.vlm.fake import ScriptedBackend
        cfg = replace(load_config({str(cfg.home)!r}, environ={{}}), "capture", sample_fps=2.0)
        def slow(call):
            time.sleep(0.4)
            clock = call.prompt.rsplit("New segment ", 1)[1].split("-", 1)[0]
            return json.dumps({{"description": "At " + clock + " I held the cup."}})
        ingest({str(clip)!r}, Store.open(cfg.db_path), ScriptedBackend(slow), cfg)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", child], env=env)
    store = Store.open(cfg.db_path)
    deadline = time.time() + 60
    while len(store.memories()) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = store.memories()
    assert 3 <= len(before) < 8

    def resumed_prompt(call):
        return numbered_memories(call)

    backend = ScriptedBackend(resumed_prompt)
    report = ingest(str(clip), store, backend, cfg)
    after = store.memories()
    assert len(after) == 8 and report.segments_written == 8 - len(before)
    assert [m["t_start"] for m in after] == [10.0 * i for i in range(8)]
    assert [m["text"] for m in after[:len(before)]] == [m["text"] for m in before]  # nothing rewritten
    # the first resumed prompt carries the memories written before the kill
    assert before[-1]["text"] in backend.calls[0].prompt


class CountingEmbedder:
    name = "counting"

    def __init__(self):
        self.texts = []

    def encode(self, texts):
        self.texts += texts
        return np.ones((len(texts), 4), np.float32) / 2


def test_memories_are_embedded_as_they_are_written(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 20)
    store = Store.open(cfg.db_path)
    embedder = CountingEmbedder()
    with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg, embedder=embedder) as ing:
        ing.advance()
    ids, matrix = store.embeddings("counting")
    assert ids == [m["id"] for m in store.memories()] and matrix.shape == (2, 4)
    assert embedder.texts == [m["text"] for m in store.memories()]


def test_keyframes_are_kept_for_phase_two_and_candidates_sampled(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 20)
    store = Store.open(cfg.db_path)
    cfg = replace(cfg, "writer", candidate_share=1.0, candidates_per_segment=2)
    report = ingest(str(clip), store, ScriptedBackend(numbered_memories), cfg)
    for seg in store.segments(report.stream_id):
        kept = store.kept_frames(seg["id"])
        assert kept and all(Path(k["path"]).is_file() for k in kept)
        cands = store.candidates(segment_id=seg["id"])
        assert [c["source"] for c in cands] == ["writer", "sampled", "sampled"]
        assert all(c["valid"] for c in cands)
    # the writer's window for segment 1 can be rebuilt from kept frames alone
    from edge_agent.memory.keep import kept_window_messages

    seg1 = store.segments(report.stream_id)[1]
    messages = kept_window_messages(store, seg1["id"], cfg.writer.window_segments)
    text = "".join(p for p in messages[1].parts if isinstance(p, str))
    assert "New segment 00:00:10-00:00:20" in text and "I was in the kitchen at 00:00:00." in text
