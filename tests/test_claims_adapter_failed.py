"""Issue 10 ("every claim holds"): an adapter the writer cannot load is recorded as "failed" in the registry.

Migration m005 rebuilds `adapters` (SQLite cannot alter a CHECK) so that its status can say "failed"; a
database at the previous schema version keeps every row through it. When the active adapter does not load
during a run, its row becomes "failed" with the reason, no adapter is active any more, the memories written
after it carry no adapter id, and `adapter list [--json]` says so; `adapter activate` can replace it.
"""

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from edge_agent.adapt.registry import AdapterRegistry
from edge_agent.config import load_config, replace
from edge_agent.runtime import Ingestor
from edge_agent.store import Store, migrations
from edge_agent.types import SteeringVector
from edge_agent.vlm.fake import ScriptedBackend
from test_runtime import numbered_memories, write_clip
from test_store_schema import EXPECTED_SCHEMA, schema

M005 = "m005_adapter_failed_issue10"


@pytest.fixture
def cfg(tmp_path):
    c = load_config(tmp_path / "home", environ={})
    c = replace(c, "writer", candidate_share=0.0)
    return replace(c, "capture", sample_fps=2.0)


def _vec(seed: int, hidden: int = 64, model_hash: str = "scripted-base-model") -> SteeringVector:
    return SteeringVector(np.random.default_rng(seed).normal(size=hidden).astype(np.float32), 22, 1.0, model_hash)


def _corrupt(path: str | Path) -> None:
    Path(path).write_bytes(b"\x00garbage, not a safetensors header" * 8)


# --- the migration --------------------------------------------------------------------------------------------

def test_m005_follows_m004():
    names = [m.__name__ for m in migrations.MIGRATIONS]
    assert names.index(M005) == 4 and names[3] == "m004_feedback_history_issue13"


def test_m005_upgrades_a_database_at_the_previous_version_keeping_every_row(tmp_path):
    path = tmp_path / "old.db"
    previous = migrations.MIGRATIONS[:4]  # the schema version before m005
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    assert migrations.migrate(conn, previous) == [m.__name__ for m in previous]
    with pytest.raises(sqlite3.IntegrityError):  # the old CHECK: "failed" cannot be written before m005
        conn.execute("INSERT INTO adapters (id, status, created_at) VALUES ('x', 'failed', 0)")
    # one row of every status the old schema knew, with every column filled
    statuses = ["candidate", "active", "inactive", "rejected", "rolled_back"]
    for i, status in enumerate(statuses):
        conn.execute(
            "INSERT INTO adapters (id, status, reason, path, gguf_path, layer, scale, hidden_size, base_model_hash, "
            "pair_ids, feedback_ids, metrics, extra, previous_id, created_at, activated_at) "
            "VALUES (?, ?, ?, ?, ?, 22, 1.5, 64, 'hash', ?, ?, ?, ?, ?, ?, ?)",
            (f"a{i}", status, f"reason {i}", f"/p/{i}.safetensors", f"/p/{i}.gguf", json.dumps([i, i + 1]),
             json.dumps([i]), json.dumps({"acc": i / 10}), json.dumps({"note": f"n{i}"}),
             f"a{i - 1}" if i else None, 1000.0 - i, 2000.0 + i if status == "active" else None))
    # other tables' rows must not be touched by the rebuild either
    conn.execute("INSERT INTO streams (source, fingerprint, origin, kind, created_at) VALUES ('s', 'fp', 0, 'file', 0)")
    conn.execute("INSERT INTO segments (stream_id, idx, t_start, t_end, status, created_at) "
                 "VALUES (1, 0, 0, 10, 'written', 0)")
    conn.execute("INSERT INTO memories (stream_id, segment_id, text, t_start, t_end, adapter_id, created_at) "
                 "VALUES (1, 1, 'I put the red cup on the shelf.', 0, 10, 'a1', 0)")
    before = conn.execute("SELECT rowid, * FROM adapters ORDER BY rowid").fetchall()
    memories_before = conn.execute("SELECT * FROM memories").fetchall()
    conn.close()

    store = Store.open(path)  # what every command does: pending migrations are applied
    c = store.conn
    assert migrations.applied(c) == [m.__name__ for m in migrations.MIGRATIONS]
    assert c.execute("SELECT rowid, * FROM adapters ORDER BY rowid").fetchall() == before
    assert c.execute("SELECT * FROM memories").fetchall() == memories_before
    assert store.fts_search("cup", 5)  # the FTS5 index is intact
    assert schema(c) == EXPECTED_SCHEMA  # the same schema as a fresh database (no leftover table, index kept)
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    assert [r["id"] for r in store.adapters()] == ["a4", "a3", "a2", "a1", "a0"]  # created_at order, as before
    assert store.active_adapter()["id"] == "a1"
    assert store.get_adapter("a2")["metrics"] == {"acc": 0.2} and store.get_adapter("a2")["note"] == "n2"

    # the new status is accepted, a bogus one still refused, and still at most one active adapter
    store.set_adapter_status("a1", "failed", "the file does not load")
    assert store.get_adapter("a1")["status"] == "failed" and store.active_adapter() is None
    with pytest.raises(sqlite3.IntegrityError):
        c.execute("UPDATE adapters SET status = 'bogus' WHERE id = 'a0'")
    c.execute("UPDATE adapters SET status = 'active' WHERE id = 'a0'")
    with pytest.raises(sqlite3.IntegrityError):
        c.execute("UPDATE adapters SET status = 'active' WHERE id = 'a2'")
    store.close()
    again = Store.open(path)  # nothing pending on the next open
    assert migrations.migrate(again.conn) == []
    again.close()


def test_m005_failing_halfway_leaves_the_previous_schema(tmp_path, monkeypatch):
    """The rebuild runs inside the migration's transaction: a failure leaves the old table and its rows."""
    path = tmp_path / "old.db"
    previous = migrations.MIGRATIONS[:4]  # the schema version before m005
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(conn, previous)
    conn.execute("INSERT INTO adapters (id, status, created_at) VALUES ('a', 'active', 0)")
    old_schema = schema(conn)

    def broken(c):
        migrations.m005_adapter_failed_issue10(c)
        raise RuntimeError("power cut")

    broken.__name__ = M005
    with pytest.raises(RuntimeError):
        migrations.migrate(conn, [*previous, broken])
    assert schema(conn) == old_schema
    assert conn.execute("SELECT id, status FROM adapters").fetchall() == [("a", "active")]
    assert M005 not in migrations.applied(conn)
    conn.close()


# --- the runtime and the registry -----------------------------------------------------------------------------

def test_a_corrupt_active_adapter_during_a_run_ends_failed_with_its_reason(tmp_path, cfg, monkeypatch):
    from edge_agent.vlm import steering

    loads: list[str] = []
    real_load = steering.load_steering_vector

    def counting_load(path):
        loads.append(str(path))
        return real_load(path)

    monkeypatch.setattr(steering, "load_steering_vector", counting_load)
    clip = write_clip(tmp_path / "clip.mp4", 40)
    store = Store.open(cfg.db_path)
    reg = AdapterRegistry(store, cfg.adapters_dir)
    good = reg.register(_vec(1), status="active", reason="gate ok", adapter_id="good")["id"]
    backend = ScriptedBackend(numbered_memories)
    with Ingestor(str(clip), store, backend, cfg) as ing:
        ing.advance(until=10)
        bad = reg.register(_vec(2), status="active", reason="gate ok too", adapter_id="bad")
        _corrupt(bad["path"])  # e.g. a damaged disk, or a file replaced by hand
        ing.advance()
    row = store.get_adapter("bad")
    assert row["status"] == "failed"
    assert "not a safetensors file" in row["reason"] and bad["path"] in row["reason"]
    assert "gate ok too" in row["reason"]  # the gate's reason is kept beside the failure
    assert store.active_adapter() is None  # no longer the active one
    assert store.get_adapter(good)["status"] == "inactive"
    mems = store.memories()
    assert len(mems) == 4
    assert [m["adapter_id"] for m in mems] == ["good", None, None, None]  # after it: the base model
    assert [s["adapter_id"] for s in store.segments(mems[0]["stream_id"])] == ["good", None, None, None]
    assert backend.steering is None
    assert loads.count(bad["path"]) == 1  # not retried on every segment

    listed = run_cli(cfg.home, "adapter", "list", "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    by_id = {r["id"]: r for r in json.loads(listed.stdout)}
    assert by_id["bad"]["status"] == "failed" and "not a safetensors file" in by_id["bad"]["reason"]
    assert by_id["good"]["status"] == "inactive"
    text = run_cli(cfg.home, "adapter", "list")
    assert text.returncode == 0, text.stderr.decode()
    bad_line = [line for line in text.stdout.decode().splitlines() if line.startswith("bad ")]
    assert len(bad_line) == 1 and " failed " in bad_line[0] and "NOT APPLIED" in bad_line[0]


def test_a_model_that_refuses_the_adapter_marks_it_failed_too(tmp_path, cfg):
    clip = write_clip(tmp_path / "clip.mp4", 20)
    store = Store.open(cfg.db_path)
    reg = AdapterRegistry(store, cfg.adapters_dir)
    reg.register(_vec(3, hidden=32), status="active", reason="gate ok", adapter_id="narrow")  # another model's size
    with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg) as ing:
        ing.advance()
    row = store.get_adapter("narrow")
    assert row["status"] == "failed" and "NOT APPLIED" in row["reason"]
    assert [m["adapter_id"] for m in store.memories()] == [None, None]


def test_after_a_failure_activate_replaces_it_and_a_running_writer_picks_it_up(tmp_path, cfg):
    from edge_agent.errors import AdapterError

    clip = write_clip(tmp_path / "clip.mp4", 40)
    store = Store.open(cfg.db_path)
    reg = AdapterRegistry(store, cfg.adapters_dir)
    bad = reg.register(_vec(4), status="active", adapter_id="bad")
    reg.register(_vec(5), status="inactive", adapter_id="good")
    original = Path(bad["path"]).read_bytes()
    _corrupt(bad["path"])
    with Ingestor(str(clip), store, ScriptedBackend(numbered_memories), cfg) as ing:
        ing.advance(until=10)
        assert store.get_adapter("bad")["status"] == "failed"
        with pytest.raises(AdapterError, match="no adapter is active"):
            reg.rollback()
        with pytest.raises(AdapterError):
            reg.activate("bad")  # its file still does not load: refused, stays failed
        assert store.get_adapter("bad")["status"] == "failed"
        reg.activate("good")  # `edge-agent adapter activate good`
        ing.advance(until=20)
        Path(bad["path"]).write_bytes(original)  # the file repaired: activating it again is picked up
        reg.activate("bad")
        ing.advance(until=30)
    assert store.get_adapter("bad")["status"] == "active"
    assert [m["adapter_id"] for m in store.memories()] == [None, "good", "bad"]


def test_adapter_list_json_on_a_cli_run_with_a_corrupt_adapter(tmp_path, tiny_model):
    """`edge-agent run` itself (the tiny model): the active adapter's file is damaged before the run starts
    (the file never loads, so its vector's size does not matter)."""
    home = tmp_path / "home"
    cfg = load_config(home, environ={})
    store = Store.open(cfg.db_path)
    row = AdapterRegistry(store, cfg.adapters_dir).register(_vec(6), status="active", reason="gate ok",
                                                            adapter_id="damaged")
    store.close()
    _corrupt(row["path"])
    clip = write_clip(tmp_path / "clip.mp4", 20)
    proc = run_cli(home, "run", str(clip), "--json", model=tiny_model)
    assert proc.returncode == 0, proc.stderr.decode()
    listed = run_cli(home, "adapter", "list", "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    [r] = json.loads(listed.stdout)
    assert r["id"] == "damaged" and r["status"] == "failed" and "not a safetensors file" in r["reason"]
    with Store.open(cfg.db_path) as s:
        assert s.active_adapter() is None
        segs = s.segments(json.loads(proc.stdout)["stream_id"])
        assert len(segs) == 2 and all(seg["adapter_id"] is None for seg in segs)
        assert all(m["adapter_id"] is None for m in s.memories())
