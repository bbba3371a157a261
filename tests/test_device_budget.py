"""The storage budget: over storage.max_bytes (or past storage.retention_days) the oldest memories go first, with
everything derived from them, and the database stays consistent; writes never fail because of it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge_agent.config import load_config
from edge_agent.device.budget import BudgetKeeper, enforce, usage
from edge_agent.device.events import events
from edge_agent.store import Store
from edge_agent.types import Segment

DAY = 86400.0


def _fill(cfg, store: Store, n: int, origin: float, *, text_bytes: int = 3000) -> list[int]:
    """n consecutive 10 s segments, each with a memory, an embedding, two candidates + a pair and a kept frame."""
    sid = store.get_or_create_stream(f"cam{origin}", f"fp{origin}", origin, "camera")
    seg_ids = []
    for i in range(n):
        text = f"Memory {i} at {origin}: " + ("the red cup on the shelf " * (text_bytes // 25))
        seg_id, mem_id = store.commit_segment(sid, Segment(i, i * 10.0, i * 10.0 + 10), memory=text, failure=None,
                                              writer_model="m", adapter_id=None, n_tokens=10, latency_s=0.1)
        store.put_embeddings("minilm", [mem_id], np.random.default_rng(i).normal(size=(1, 384)).astype("f4"))
        a = store.add_candidate(seg_id, text, valid=True, failure=None, sampling={}, source="written")
        b = store.add_candidate(seg_id, "other " + text[:100], valid=True, failure=None, sampling={}, source="sampled")
        store.add_pair(a, b, [], score=1.0, split="train")
        frame = cfg.frames_dir / f"s{int(origin)}" / f"{i:06d}.png"
        frame.parent.mkdir(parents=True, exist_ok=True)
        frame.write_bytes(b"\x89PNG" + bytes(2000))
        store.keep_frames(seg_id, [frame], expires_at=time.time() + DAY)
        seg_ids.append(seg_id)
    return seg_ids


def _consistent(store: Store) -> None:
    conn = store.conn
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('integrity-check')")  # raises if FTS drifted
    n_mem = conn.execute("SELECT COUNT(*) FROM memories").fetchone()[0]
    n_fts = conn.execute("SELECT COUNT(*) FROM memories_fts").fetchone()[0]
    assert n_mem == n_fts
    orphans = conn.execute("SELECT COUNT(*) FROM memory_embeddings WHERE memory_id NOT IN (SELECT id FROM memories)")
    assert orphans.fetchone()[0] == 0
    for row in store.kept_frames():
        assert __import__("os").path.exists(row["path"])
    # a forgotten segment keeps no candidates, frames or memory
    bad = conn.execute("SELECT COUNT(*) FROM segments s WHERE s.status = 'forgotten' AND (EXISTS (SELECT 1 FROM "
                       "candidates c WHERE c.segment_id = s.id) OR EXISTS (SELECT 1 FROM kept_frames k WHERE "
                       "k.segment_id = s.id) OR EXISTS (SELECT 1 FROM memories m WHERE m.segment_id = s.id))")
    assert bad.fetchone()[0] == 0


def test_over_budget_forgets_oldest_first_and_stays_consistent(tmp_path):
    cfg = load_config(tmp_path / "home", environ={})
    store = Store.open(cfg.db_path)
    now = time.time()
    _fill(cfg, store, 20, origin=now - 2 * DAY)  # older stream
    _fill(cfg, store, 20, origin=now - DAY)
    full = usage(store, cfg)
    assert full["memories"] == 40 and full["frames_bytes"] == 40 * 2004
    budget = int(full["used_bytes"] * 0.6)
    cfg = load_config(tmp_path / "home", environ={}, overrides={"storage.max_bytes": budget})

    report = enforce(store, cfg)
    assert report["after"]["used_bytes"] <= budget < report["before"]["used_bytes"]
    gone = report["forgotten"]["memories"]
    assert 0 < gone < 40 and report["note"] is None
    left = store.memories()
    # oldest first: what is left is exactly the newest memories
    starts = sorted(m["t_start"] for m in left)
    assert len(left) == 40 - gone
    all_starts = sorted([now - 2 * DAY + 10 * i for i in range(20)] + [now - DAY + 10 * i for i in range(20)])
    assert starts == pytest.approx(all_starts[gone:])
    assert report["forgotten"]["kept_frames"] == gone and report["forgotten"]["pairs"] == gone
    assert report["forgotten"]["candidates"] == 2 * gone
    assert store.conn.execute("SELECT COUNT(*) FROM memory_embeddings").fetchone()[0] == len(left)
    assert len(list(cfg.frames_dir.rglob("*.png"))) == len(left)
    _consistent(store)
    # writing goes on after enforcement
    sid = store.get_or_create_stream("cam-new", "fp-new", now, "camera")
    store.commit_segment(sid, Segment(0, 0, 10), memory="Still writing.", failure=None, writer_model="m",
                         adapter_id=None, n_tokens=2, latency_s=0.1)
    _consistent(store)


def test_retention_forgets_what_is_older_than_the_limit(tmp_path):
    cfg = load_config(tmp_path / "home", environ={}, overrides={"storage.retention_days": 1.5})
    store = Store.open(cfg.db_path)
    now = time.time()
    _fill(cfg, store, 3, origin=now - 3 * DAY)
    _fill(cfg, store, 3, origin=now - 0.5 * DAY)
    report = enforce(store, cfg, now=now)
    assert report["forgotten"]["memories"] == 3 and "older than 1.5 days" in report["reason"]
    assert all(m["t_start"] > now - DAY for m in store.memories())
    _consistent(store)


def test_no_budget_changes_nothing(tmp_path):
    cfg = load_config(tmp_path / "home", environ={})
    store = Store.open(cfg.db_path)
    _fill(cfg, store, 3, origin=time.time())
    keeper = BudgetKeeper(store, cfg)
    assert not keeper.active and keeper.after_segment() is None
    assert enforce(store, cfg)["forgotten"] == {} and len(store.memories()) == 3


def test_keeper_checks_between_segments_and_records_what_it_did(tmp_path):
    cfg = load_config(tmp_path / "home", environ={})
    store = Store.open(cfg.db_path)
    _fill(cfg, store, 10, origin=time.time() - DAY)
    cfg = load_config(tmp_path / "home", environ={}, overrides={
        "storage.max_bytes": int(usage(store, cfg)["used_bytes"] * 0.5), "storage.check_every_segments": 3})
    keeper = BudgetKeeper(store, cfg, stream_id=1)
    assert keeper.after_segment() is not None  # the first segment checks
    assert keeper.after_segment() is None and keeper.after_segment() is None
    assert keeper.after_segment() is not None  # then every third
    rows = events(store, kind="budget")
    assert len(rows) == 1 and rows[0]["detail"]["forgotten"]["memories"] > 0
    assert rows[0]["detail"]["used_bytes"] <= cfg.storage.max_bytes


def test_a_budget_too_small_for_anything_says_so_and_never_fails(tmp_path):
    cfg = load_config(tmp_path / "home", environ={}, overrides={"storage.max_bytes": 1})
    store = Store.open(cfg.db_path)
    _fill(cfg, store, 4, origin=time.time())
    report = BudgetKeeper(store, cfg).check()
    assert report["after"]["memories"] == 0 and "raise storage.max_bytes" in report["note"]
    _consistent(store)
