"""Issue 13, items 3, 7 and 8 at the store: forget beside a reader, `forget --all`, empty frame folders,
feedback that replaces feedback (with its audit trail), a full disk, and the wearer's export."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import StoreError
from edge_agent.store import Store
from edge_agent.types import Segment

SECRET = "ZEBRA-SECRET-4471 lives at the blue door"
ORIGIN = 1_700_000_000.0


def commit(store, sid, i, text):
    return store.commit_segment(sid, Segment(i, 10.0 * i, 10.0 * i + 10), memory=text, failure=None,
                                writer_model="t", adapter_id=None, n_tokens=5, latency_s=0.1)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "home" / "memory.db")
    yield s
    s.close()


def raw_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def fill(store, n=6):
    sid = store.get_or_create_stream("cam", "fp", ORIGIN, "camera")
    ids = [commit(store, sid, i, f"{SECRET} number {i}.")[1] for i in range(n)]
    return sid, ids


def hold_snapshot(path: Path) -> sqlite3.Connection:
    """Another process's `ask` in the middle of reading: an open read transaction pins the old pages."""
    reader = sqlite3.connect(str(path), isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM memories").fetchall()
    return reader


def test_forget_beside_a_reader_waits_says_so_and_scrubs_when_it_lets_go(store):
    fill(store)
    assert SECRET.encode() in raw_bytes(store.path)
    reader = hold_snapshot(store.path)
    said: list[str] = []
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(store.forget(everything=True, scrub_wait_s=30,
                                                                        on_wait=said.append)))
    t0 = time.monotonic()
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive() and said and "another process" in said[0]  # it says what it waits for
    reader.execute("ROLLBACK")
    reader.close()
    worker.join(10)
    assert not worker.is_alive() and time.monotonic() - t0 < 10
    assert result["memories"] == 6 and result["scrub_pending"] == 0
    assert SECRET.encode() not in raw_bytes(store.path)
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_forget_that_cannot_scrub_in_time_says_so_and_the_next_open_finishes(store, tmp_path):
    fill(store)
    reader = hold_snapshot(store.path)
    counts = store.forget(since=0, scrub_wait_s=0.3)
    assert counts["memories"] == 6 and counts["scrub_pending"] == 1  # reported, not claimed done
    assert Path(f"{store.path}-scrub-pending").exists()
    reader.execute("ROLLBACK")
    reader.close()
    Store.open(store.path).close()  # any next command
    assert not Path(f"{store.path}-scrub-pending").exists()
    assert SECRET.encode() not in raw_bytes(store.path)


def test_forget_all_removes_the_question_log_and_empty_frame_folders(store, tmp_path):
    sid, ids = fill(store, 3)
    qid = store.add_question("Where is the blue door?", [], ORIGIN + 100)
    aid = store.add_answer(qid, choice=None, text="ZEBRA-ANSWER-99", abstained=False, cited=[ids[0]], model="m",
                           adapter_id=None, shown=ids)
    store.add_feedback(aid, True)
    store.add_feedback(aid, False, "ZEBRA-CORRECTION-77")
    seg = store.memories()[0]["segment_id"]
    folder = tmp_path / "home" / "frames" / "streamkey" / "000000"
    folder.mkdir(parents=True)
    frame = folder / "00000001_0.500.png"
    frame.write_bytes(b"png")
    store.keep_frames(seg, [frame], ORIGIN + 86400)
    counts = store.forget(everything=True)
    assert counts["questions"] == 1 and counts["answers"] == 1 and counts["feedback"] == 1
    assert store.counts()["questions"] == store.counts()["answers"] == store.counts()["feedback"] == 0
    assert store.feedback_history() == []
    assert not folder.exists() and not folder.parent.exists() and (tmp_path / "home" / "frames").exists()
    assert counts["frame_folders"] == 2
    data = raw_bytes(store.path)
    for text in (SECRET, "ZEBRA-ANSWER-99", "ZEBRA-CORRECTION-77", "blue door"):
        assert text.encode() not in data, text


def test_feedback_replaces_earlier_feedback_and_keeps_the_audit_trail(store):
    sid, ids = fill(store, 1)
    qid = store.add_question("q?", [], ORIGIN + 50)
    aid = store.add_answer(qid, choice="A", text="a", abstained=False, cited=[ids[0]], model="m", adapter_id=None)
    first = store.add_feedback(aid, True)
    second = store.add_feedback(aid, False, "on the shelf")
    current = store.get_answer(aid)["feedback"]
    assert [(f["id"], f["correct"]) for f in current] == [(second, False)]  # one verdict: the latest
    assert [f["id"] for f in store.feedback()] == [second]  # what Phase Two reads
    trail = store.feedback_history(aid)
    assert [(t["feedback_id"], t["correct"], t["replaced_by"]) for t in trail] == [(first, True, second)]


def test_a_full_disk_stops_with_a_clear_error_and_a_consistent_database(store):
    sid, ids = fill(store, 2)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk full" (SQLITE_FULL)
    with pytest.raises(StoreError, match="full"):
        for i in range(2, 400):
            commit(store, sid, i, "x" * 2000 + f" {i}")
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    segs = store.segments(sid)
    mems = store.memories()
    assert len(segs) == len(mems) and [s["idx"] for s in segs] == list(range(len(segs)))  # none half-written
    assert store.conn.execute("SELECT COUNT(*) FROM memories_fts").fetchone()[0] == len(mems)


def test_export_gives_the_wearer_everything(store, tmp_path):
    from edge_agent.store.dump import export_all

    sid, ids = fill(store, 2)
    qid = store.add_question("Where is the blue door?", ["A. left"], ORIGIN + 100)
    aid = store.add_answer(qid, choice="A", text="left", abstained=False, cited=[ids[1]], model="m", adapter_id=None)
    store.add_feedback(aid, True)
    store.match_face(np.ones(4, np.float32), 0.7, 3, ORIGIN + 5)
    dump = export_all(store)
    assert [m["text"] for m in dump["memories"]] == [f"{SECRET} number {i}." for i in range(2)]
    assert dump["questions"][0]["text"] == "Where is the blue door?"
    assert dump["questions"][0]["answers"][0]["citations"] == [ids[1]]
    assert dump["questions"][0]["answers"][0]["feedback"][0]["correct"] is True
    assert dump["adapters"] == [] and dump["streams"][0]["source"] == "cam"
    assert dump["faces"] == [{"tag": "<face_1>", "n_frames": 3, "first_seen": ORIGIN + 5, "last_seen": ORIGIN + 5}]
    json.dumps(dump)  # plain JSON all the way down


def test_ingest_stops_on_a_full_disk_with_a_clear_error_and_resumes_later(tmp_path):
    from edge_agent.config import load_config, replace
    from edge_agent.runtime import ingest
    from edge_agent.vlm.fake import ScriptedBackend
    from test_reliability_capture import write_clip

    cfg = replace(load_config(tmp_path / "home", environ={}), "writer", candidate_share=0.0, keep_frames_hours=0.0,
                  max_memory_tokens=1024)
    clip = write_clip(tmp_path / "c.mp4", 60.0)
    store = Store.open(cfg.db_path)
    calls = {"n": 0}

    def reply(call):
        calls["n"] += 1
        if calls["n"] == 3:  # the disk fills up after two segments: no page may be added any more
            pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
            store.conn.execute(f"PRAGMA max_page_count = {pages}")
        return json.dumps({"description": f"Memory {calls['n']}: " + "a long brick wall " * 150 + "."})

    report = ingest(str(clip), store, ScriptedBackend(reply), cfg)
    assert report.error and "disk full" in report.error and str(cfg.db_path) in report.error, report
    written = report.segments_written
    assert 0 < written < 6
    store.conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(store.memories()) == written
    again = ingest(str(clip), store, ScriptedBackend(reply), cfg)
    assert again.error is None and written + again.segments_written == 6


def test_export_lists_kept_frames_and_adapter_files_by_absolute_path(store, tmp_path):
    """The database records files inside the home relative to it (a moved home still finds them); an export is read
    elsewhere, so it lists them absolute, as the store's readers do."""
    from edge_agent.store.dump import export_all

    sid, ids = fill(store, 1)
    home = tmp_path / "home"
    frame = home / "frames" / "streamkey" / "000000" / "00000001_0.500.png"
    frame.parent.mkdir(parents=True)
    frame.write_bytes(b"png")
    store.keep_frames(store.memories()[0]["segment_id"], [frame], ORIGIN + 86400)
    vector = home / "adapters" / "a1.safetensors"
    vector.parent.mkdir()
    vector.write_bytes(b"v")
    store.add_adapter({"id": "a1", "path": str(vector), "layer": 22})
    assert store.conn.execute("SELECT path FROM kept_frames").fetchone()[0] == "frames/streamkey/000000/00000001_0.500.png"
    dump = export_all(store)
    assert [f["path"] for f in dump["kept_frames"]] == [str(frame.resolve())]
    assert dump["adapters"][0]["path"] == str(vector.resolve()) and dump["adapters"][0]["gguf_path"] is None
    assert json.loads(json.dumps(dump, default=str))["kept_frames"][0]["path"] == str(frame.resolve())
