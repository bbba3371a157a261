"""Claims of issues 10 and 13 about the ingest path: kept keyframes really expire (in `run` and on every command
that opens the store), they are kept only when Phase Two can use them, a crash cannot orphan a PNG, a running
writer drops what `forget` removed, and memories record the adapter that was really applied."""

import os
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import load_config, replace
from edge_agent.runtime import Ingestor
from edge_agent.store import Store
from edge_agent.types import SteeringVector
from edge_agent.vlm.fake import ScriptedBackend
from test_runtime import numbered_memories, write_clip


@pytest.fixture
def cfg(tmp_path):
    c = load_config(tmp_path / "home", environ={})
    c = replace(c, "writer", candidate_share=0.0)
    return replace(c, "capture", sample_fps=2.0)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


# --- 10.3: expiry without `adapt` ---------------------------------------------------------------------------

def test_run_expires_kept_frames_between_segments(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 30)
    store = Store.open(cfg.db_path)
    with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg) as ing:
        ing.advance(until=10)
        first = store.kept_frames()
        assert first and all(Path(r["path"]).is_file() for r in first)
        # the first segment's frames are due now: the next segment must delete them, rows and files
        store.conn.execute("UPDATE kept_frames SET expires_at = ?", (time.time() - 1,))
        ing.advance(until=20)
    left = store.kept_frames()
    assert {r["id"] for r in first}.isdisjoint(r["id"] for r in left)
    assert not any(Path(r["path"]).exists() for r in first)
    assert left  # the second segment's own frames stay until they are due


def test_every_command_that_opens_the_store_expires_frames(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 20)
    with Store.open(cfg.db_path) as store:
        with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg) as ing:
            ing.advance()
        rows = store.kept_frames()
        assert rows
        store.conn.execute("UPDATE kept_frames SET expires_at = ?", (time.time() - 1,))
    with Store.open(cfg.db_path) as store:  # e.g. `memories`, `ask`: nothing but opening
        assert store.kept_frames() == []
    assert not any(Path(r["path"]).exists() for r in rows)


def test_cli_memories_expires_frames(tmp_path, cfg):
    from conftest import run_cli

    clip = write_clip(tmp_path / "clip.mp4", 10)
    with Store.open(cfg.db_path) as store:
        with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg) as ing:
            ing.advance()
        store.conn.execute("UPDATE kept_frames SET expires_at = ?", (time.time() - 1,))
        paths = [r["path"] for r in store.kept_frames()]
    assert paths and all(os.path.exists(p) for p in paths)
    r = run_cli(cfg.home, "memories", "--json")
    assert r.returncode == 0, r.stderr
    assert not any(os.path.exists(p) for p in paths)


def test_no_frames_kept_when_phase_two_cannot_use_them(tmp_path, cfg, tiny_model):
    # a model folder without hf/: adapt could never train, so keeping pictures of the wearer's day is pointless
    from edge_agent.runtime import phase_two_can_use_frames

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("model.gguf", "mmproj.gguf"):
        os.symlink(tiny_model / f, bare / f)
    assert phase_two_can_use_frames(replace(cfg, "model", name=str(bare))) is False
    assert phase_two_can_use_frames(replace(cfg, "model", name=str(tiny_model))) is True
    assert phase_two_can_use_frames(replace(replace(cfg, "model", name=str(tiny_model)), "writer",
                                            keep_frames_hours=0.0)) is False

    clip = write_clip(tmp_path / "clip.mp4", 20)
    store = Store.open(cfg.db_path)
    c = replace(cfg, "writer", candidate_share=1.0)
    with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), c, keep_frames=False) as ing:
        ing.advance()
    assert store.kept_frames() == [] and store.candidates() == []
    assert _files(c.frames_dir) == []
    assert len(store.memories()) == 2


# --- 13.2: no orphan keyframes ------------------------------------------------------------------------------

def test_keyframes_are_renamed_only_after_their_row_commits(tmp_path, cfg, monkeypatch):
    """A crash between writing the PNGs and committing their rows leaves only `.part` files, which the
    start-up sweep removes; a final-named PNG always has its row."""
    from edge_agent.memory.keep import PART_SUFFIX, sweep_frames

    clip = write_clip(tmp_path / "clip.mp4", 10)
    store = Store.open(cfg.db_path)
    seen: list[list[Path]] = []

    def crash(self, segment_id, paths, expires_at):
        seen.append(_files(cfg.frames_dir))
        raise KeyboardInterrupt  # the kill, as late as it can come: files written, row not yet committed

    monkeypatch.setattr(Store, "keep_frames", crash)
    with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg) as ing:
        with pytest.raises(KeyboardInterrupt):
            ing.advance()
    # at the moment of the crash only temporary names existed ...
    assert seen[0] and all(p.name.endswith(PART_SUFFIX) for p in seen[0])
    monkeypatch.undo()
    # ... and a real kill would leave them (the handler above cleaned up; recreate what SIGKILL leaves)
    for p in seen[0]:
        p.write_bytes(b"png")
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    stray = cfg.frames_dir / "abc" / "000009" / "00000001_1.000.png"  # an unknown final-named file
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"png")
    fresh = cfg.frames_dir / "abc" / "000010" / ("00000001_1.000.png" + PART_SUFFIX)  # a concurrent writer's
    fresh.parent.mkdir(parents=True)
    fresh.write_bytes(b"png")
    counts = sweep_frames(store, cfg.frames_dir)
    assert counts["deleted"] == len(seen[0]) + 1
    assert _files(cfg.frames_dir) == [fresh]


def test_sweep_keeps_recorded_frames_and_finishes_committed_renames(tmp_path, cfg):
    from edge_agent.memory.keep import PART_SUFFIX, sweep_frames

    clip = write_clip(tmp_path / "clip.mp4", 20)
    store = Store.open(cfg.db_path)
    with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg) as ing:
        ing.advance()
    rows = store.kept_frames()
    # killed after the commit, before the rename: the row names the final path, the disk holds `.part`
    last = Path(rows[-1]["path"])
    os.replace(last, last.with_name(last.name + PART_SUFFIX))
    counts = sweep_frames(store, cfg.frames_dir)
    assert counts == {"deleted": 0, "renamed": 1, "folders": 0}
    assert all(Path(r["path"]).is_file() for r in rows)


def test_frames_of_a_segment_forgotten_before_its_frames_commit_are_not_kept(tmp_path, cfg, monkeypatch):
    clip = write_clip(tmp_path / "clip.mp4", 10)
    store = Store.open(cfg.db_path)
    real_commit = Store.commit_segment

    def commit_then_forget(self, *a, **kw):
        out = real_commit(self, *a, **kw)
        self.forget()  # `forget --all` from another process, right after the segment's commit
        return out

    monkeypatch.setattr(Store, "commit_segment", commit_then_forget)
    with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg) as ing:
        ing.advance()
    assert store.kept_frames() == []
    assert _files(cfg.frames_dir) == []


# --- 13.1: forget reaches a running writer ------------------------------------------------------------------

def test_forget_reaches_the_running_writers_window(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 50)
    store = Store.open(cfg.db_path)
    other = Store.open(cfg.db_path)  # `edge-agent forget --all` in another process
    backend = ScriptedBackend(numbered_memories)
    c = replace(cfg, "writer", candidate_share=1.0, candidates_per_segment=1)
    with Ingestor(str(clip), store, backend, c) as ing:
        ing.advance(until=30)
        forgotten = [m["text"] for m in store.memories()]
        assert len(forgotten) == 3
        other.forget()
        n_before = len(backend.calls)
        ing.advance()
    later = backend.calls[n_before:]
    assert later
    for call in later:  # neither the memory prompts nor the candidate samples see a forgotten memory
        for text in forgotten:
            assert text not in call.prompt
        assert "00:00:00-" not in call.prompt.split("New segment", 1)[0]  # nor the forgotten frames' segments
    assert [m["t_start"] for m in store.memories()] == [30, 40]


def test_forget_of_unwritten_segments_reaches_the_window_too(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 30)
    store = Store.open(cfg.db_path)
    replies = iter(['{"description": ""}'] * 2 + ['{"description": "I was in the garden."}'] * 10)
    backend = ScriptedBackend(lambda call: next(replies))
    with Ingestor(str(clip), store, backend, replace(cfg, "writer", max_retries=0)) as ing:
        ing.advance(until=20)
        assert store.memories() == []  # both unwritten
        Store.open(cfg.db_path).forget()
        ing.advance()
    assert "Earlier segment" not in backend.calls[-1].prompt


# --- 10.4: the adapter really applied -----------------------------------------------------------------------

class RefusingBackend(ScriptedBackend):
    """Refuses one adapter id, as llama.cpp refuses a vector of another model."""

    refuse: str = ""

    def set_steering(self, vector):
        from edge_agent.errors import AdapterError

        if vector is not None and vector.adapter_id == self.refuse:
            raise AdapterError(f"adapter {vector.adapter_id}: made for another model")
        super().set_steering(vector)


def test_memories_record_the_adapter_really_applied_and_the_registry_says_why(tmp_path, cfg):
    from edge_agent.adapt.registry import AdapterRegistry

    clip = write_clip(tmp_path / "clip.mp4", 30)
    store = Store.open(cfg.db_path)
    reg = AdapterRegistry(store, cfg.adapters_dir)

    def vec(seed):
        return SteeringVector(np.random.default_rng(seed).normal(size=64).astype(np.float32), 22, 1.0,
                              "scripted-base-model")

    good = reg.register(vec(1), status="active", reason="gate ok", adapter_id="good")["id"]
    backend = RefusingBackend(numbered_memories)
    backend.refuse = "bad"
    with Ingestor(str(clip), store, backend, cfg) as ing:
        ing.advance(until=10)
        reg.register(vec(2), status="active", reason="gate ok too", adapter_id="bad")
        ing.advance()
    mems = store.memories()
    # never "bad": it was not applied; the writer fell back to the base model (issue 10: no adapter is active)
    assert [m["adapter_id"] for m in mems] == ["good", None, None]
    assert backend.steering is None and store.active_adapter() is None
    row = store.get_adapter("bad")
    assert row["status"] == "failed" and store.get_adapter(good)["status"] == "inactive"
    assert "NOT APPLIED" in row["reason"] and "another model" in row["reason"] and "gate ok too" in row["reason"]
    assert sum(v is not None and v.adapter_id == "bad" for v in backend.steering_history) == 0


def test_a_moved_home_keeps_finds_and_deletes_its_own_files(tmp_path, cfg):
    """A home copied elsewhere (a backup restored, a new disk) keeps its kept frames through the start-up sweep
    (which deletes files no row names), rebuilds their windows, runs its active adapter, and `forget` deletes
    its frames there: the store records files inside the home relative to it. With absolute paths the sweep
    deleted every frame, the adapter failed to load and forget deleted nothing."""
    import shutil

    from edge_agent.adapt.registry import AdapterRegistry
    from edge_agent.memory.keep import kept_window_messages, sweep_frames

    clip = write_clip(tmp_path / "clip.mp4", 20)
    with Store.open(cfg.db_path) as store:
        with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg) as ing:
            ing.advance()
        seg_id = store.kept_frames()[0]["segment_id"]
        assert kept_window_messages(store, seg_id, 1) is not None
        vector = SteeringVector(np.random.default_rng(0).normal(size=64).astype(np.float32), 22, 1.0, "base")
        AdapterRegistry(store, cfg.adapters_dir).register(vector, status="active", adapter_id="mine")
        raw = store.conn.execute("SELECT path FROM kept_frames UNION ALL SELECT path FROM adapters").fetchall()
        assert raw and not any(os.path.isabs(p) for (p,) in raw)
    moved_cfg = load_config(tmp_path / "moved", environ={})
    shutil.copytree(cfg.home, moved_cfg.home)
    shutil.rmtree(cfg.home)  # the old place is gone
    before = _files(moved_cfg.frames_dir)
    with Store.open(moved_cfg.db_path) as store:
        assert sweep_frames(store, moved_cfg.frames_dir)["deleted"] == 0
        assert _files(moved_cfg.frames_dir) == before and before
        assert all(Path(r["path"]).is_file() and moved_cfg.home in Path(r["path"]).parents
                   for r in store.kept_frames())
        assert kept_window_messages(store, seg_id, 1) is not None
        active = AdapterRegistry(store, moved_cfg.adapters_dir).active_vector()
        assert active is not None and np.array_equal(active.vector, vector.vector)
        assert store.forget()["frame_files"] == len(before)
    assert _files(moved_cfg.frames_dir) == []


def test_m007_records_the_files_inside_a_home_relative_to_it(tmp_path):
    """A database at the previous version: paths under its folder become relative; a moved home's (the old
    place gone, the same file under this folder) too; anything else keeps its absolute path."""
    import sqlite3

    from edge_agent.store import migrations

    home = tmp_path / "home"
    (home / "frames" / "s" / "000000").mkdir(parents=True)
    (home / "adapters" / "a1").mkdir(parents=True)
    for f in ("frames/s/000000/1.png", "frames/s/000000/2.png", "adapters/a1/vector.safetensors"):
        (home / f).write_bytes(b"x")
    conn = sqlite3.connect(home / "memory.db", isolation_level=None)
    migrations.migrate(conn, migrations.MIGRATIONS[:6])
    conn.execute("INSERT INTO streams (source, fingerprint, origin, kind, created_at) VALUES ('s', 'fp', 0, 'file', 0)")
    conn.execute("INSERT INTO segments (stream_id, idx, t_start, t_end, status, created_at) "
                 "VALUES (1, 0, 0, 10, 'written', 0)")
    old = "/gone/old-home"
    for path in (str(home / "frames/s/000000/1.png"), f"{old}/frames/s/000000/2.png", "/elsewhere/x.png"):
        conn.execute("INSERT INTO kept_frames (segment_id, path, expires_at, created_at) VALUES (1, ?, 1e12, 0)",
                     (path,))
    conn.execute("INSERT INTO adapters (id, status, path, gguf_path, created_at) VALUES ('a1', 'inactive', ?, ?, 0)",
                 (f"{old}/adapters/a1/vector.safetensors", f"{old}/adapters/a1/vector.gguf"))
    conn.close()

    with Store.open(home / "memory.db") as store:
        raw = [p for (p,) in store.conn.execute("SELECT path FROM kept_frames ORDER BY id")]
        assert raw == ["frames/s/000000/1.png", "frames/s/000000/2.png", "/elsewhere/x.png"]
        assert store.conn.execute("SELECT path, gguf_path FROM adapters").fetchone() == (
            "adapters/a1/vector.safetensors", f"{old}/adapters/a1/vector.gguf")  # the .gguf is not here
        home_real = home.resolve()
        assert [r["path"] for r in store.kept_frames()] == [
            str(home_real / "frames/s/000000/1.png"), str(home_real / "frames/s/000000/2.png"), "/elsewhere/x.png"]
        assert store.get_adapter("a1")["path"] == str(home_real / "adapters/a1/vector.safetensors")
