"""SIGKILL in the middle of ingest: committed segments stay, nothing is half-written, a re-run resumes.

A child process commits segments in a loop (as the runner does: one transaction per segment) while another
process reads; the test kills it at random moments, checks the database, and re-runs it.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

from edge_agent.store import Store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITER = textwrap.dedent("""
    import sys
    from edge_agent.store import Store
    from edge_agent.types import Segment

    path, stop = sys.argv[1], int(sys.argv[2])
    store = Store.open(path)
    sid = store.get_or_create_stream("video.mp4", "fp-video", 100.0, "file")
    last = store.last_committed_segment(sid)
    start = 0 if last is None else last + 1
    print("start", start, flush=True)
    for i in range(start, stop):
        seg = Segment(i, 10.0 * i, 10.0 * i + 10, frames_seen=20)
        if i % 7 == 3:
            store.commit_segment(sid, seg, memory=None, failure=f"failure {i}", writer_model="tiny",
                                 adapter_id=None, n_tokens=0, latency_s=0.01)
        else:
            store.commit_segment(sid, seg, memory=f"memory number {i} about the red cup " + "x" * (i % 50),
                                 failure=None, writer_model="tiny", adapter_id=None, n_tokens=12, latency_s=0.01)
        print("done", i, flush=True)
    store.close()
""")


def spawn(path, stop):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(stop)], stdout=subprocess.PIPE,
                            text=True, env=env)


def check_consistent(path):
    """Integrity, foreign keys, FTS in step, contiguous segments, each exactly as its writer meant it."""
    store = Store.open(path)
    try:
        conn = store.conn
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        conn.execute("INSERT INTO memories_fts(memories_fts, rank) VALUES ('integrity-check', 1)")
        sid = store.get_or_create_stream("video.mp4", "fp-video", 100.0, "file")
        segs = store.segments(sid)
        last = store.last_committed_segment(sid)
        n = 0 if last is None else last + 1
        assert [s["idx"] for s in segs] == list(range(n))  # no gap, no duplicate
        mems = {m["segment_id"]: m for m in store.memories()}
        assert len(mems) == len(store.memories())
        for s in segs:
            i = s["idx"]
            if i % 7 == 3:
                assert s["status"] == "failed" and s["failure"] == f"failure {i}" and s["id"] not in mems
            else:
                m = mems[s["id"]]
                assert s["status"] == "written"
                assert m["text"] == f"memory number {i} about the red cup " + "x" * (i % 50)
                assert (m["t_start"], m["t_end"]) == (100.0 + 10 * i, 110.0 + 10 * i)
        n_fts = conn.execute("SELECT COUNT(*) FROM memories_fts WHERE memories_fts MATCH 'cup'").fetchone()[0]
        assert n_fts == len(mems)
        return n
    finally:
        store.close()


def test_sigkill_mid_ingest_keeps_committed_segments_and_resumes(tmp_path):
    path = tmp_path / "memory.db"
    rng = random.Random(0)
    committed = 0
    for _round in range(4):
        proc = spawn(path, 10_000)
        first = proc.stdout.readline().split()
        assert first == ["start", str(committed)]  # resumes right after the last committed segment
        target = rng.randint(15, 40)
        seen = None
        for _ in range(target):
            seen = proc.stdout.readline().split()
        time.sleep(rng.uniform(0, 0.05))  # land somewhere inside a transaction, or between two
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        n = check_consistent(path)
        assert n >= int(seen[1]) + 1  # everything the writer saw committed is still there
        committed = n

    # A run to the end completes the stream without duplicates.
    proc = spawn(path, committed + 25)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.splitlines()[0] == f"start {committed}"
    assert check_consistent(path) == committed + 25


def test_reader_process_while_writer_commits(tmp_path):
    """`ask` in another process reads and writes (questions, answers) while the runner commits: no lock errors."""
    path = tmp_path / "memory.db"
    proc = spawn(path, 150)
    assert proc.stdout.readline().startswith("start")
    store = Store.open(path)
    try:
        for k in range(40):
            store.fts_search("red cup", 5)
            qid = store.add_question(f"question {k}", [], time.time())
            store.add_answer(qid, choice=None, text="not in memory", abstained=True, cited=[], model="tiny",
                             adapter_id=None)
    finally:
        store.close()
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert check_consistent(path) == 150
