"""Store queries: segments and memories, FTS5 in step and safe, embeddings, answers, Phase Two rows, forget."""

import numpy as np
import pytest

from edge_agent.errors import StoreError
from edge_agent.store import Store, match_expression
from edge_agent.types import Segment

ORIGIN = 1_700_000_000.0


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "memory.db")
    yield s
    s.close()


def commit(store, sid, i, text=None, failure=None):
    return store.commit_segment(sid, Segment(i, 10.0 * i, 10.0 * i + 10), memory=text,
                                failure=None if text is not None else (failure or "bad json"),
                                writer_model="tiny", adapter_id=None, n_tokens=7, latency_s=0.1)


def fts_consistent(store):
    # FTS5's own check that the index matches the external content table.
    store.conn.execute("INSERT INTO memories_fts(memories_fts, rank) VALUES ('integrity-check', 1)")
    return True


TEXTS = [
    "I put the red cup on the kitchen table.",
    "<face_1> hands me a blue book near the shelf.",
    "I wash the red cup at the sink.",
    "A sign on the door says EXIT.",
    "I leave my keys on the shelf.",
]


@pytest.fixture
def filled(store):
    sid = store.get_or_create_stream("cam0", "cam-fp", ORIGIN, "camera")
    ids = [commit(store, sid, i, t)[1] for i, t in enumerate(TEXTS)]
    return store, sid, ids


def test_streams_resume_by_fingerprint(store):
    a = store.get_or_create_stream("a.mp4", "fp1", 0.0, "file")
    assert store.get_or_create_stream("a.mp4 (renamed)", "fp1", 5.0, "file") == a
    b = store.get_or_create_stream("b.mp4", "fp2", 0.0, "file")
    assert b != a
    assert store.get_stream(a)["origin"] == 0.0  # the first origin stays
    with pytest.raises(StoreError, match="stream 99"):
        store.get_stream(99)


def test_commit_segment_is_idempotent_and_resumable(store):
    sid = store.get_or_create_stream("f", "fp", ORIGIN, "file")
    assert store.last_committed_segment(sid) is None
    seg_id, mem_id = commit(store, sid, 0, "I open the fridge.")
    again = store.commit_segment(sid, Segment(0, 0.0, 10.0), memory="something else", failure=None,
                                 writer_model="other", adapter_id="x", n_tokens=1, latency_s=9)
    assert again == (seg_id, mem_id)
    assert [m["text"] for m in store.memories()] == ["I open the fridge."]
    f_seg, f_mem = commit(store, sid, 1, failure="not JSON")
    assert f_mem is None
    assert store.get_segment(f_seg)["status"] == "failed"
    assert store.get_segment(f_seg)["failure"] == "not JSON"
    assert store.last_committed_segment(sid) == 1
    m = store.memories()[0]
    assert (m["t_start"], m["t_end"]) == (ORIGIN, ORIGIN + 10)  # absolute = origin + stream seconds
    assert store.get_segment(seg_id)["t_start"] == 0.0  # segments keep stream seconds
    with pytest.raises(ValueError):
        store.commit_segment(sid, Segment(2, 20, 30), memory=None, failure=None, writer_model="m",
                             adapter_id=None, n_tokens=0, latency_s=0)
    with pytest.raises(StoreError, match="stream 42"):
        commit(store, 42, 0, "x")


def test_recent_memories_window(filled):
    store, sid, ids = filled
    rows = store.recent_memories(sid, 4, 2)
    assert [r["id"] for r in rows] == ids[2:4]
    assert [r["segment_index"] for r in rows] == [2, 3]
    commit(store, sid, 5, failure="x")
    assert [r["id"] for r in store.recent_memories(sid, 6, 2)] == [ids[4]]  # the failed one has no memory


def test_memories_time_filter_and_search(filled):
    store, sid, ids = filled
    assert [m["id"] for m in store.memories()] == ids
    # t_end > since and t_end <= until
    assert [m["id"] for m in store.memories(since=ORIGIN + 10, until=ORIGIN + 30)] == ids[1:3]
    assert [m["id"] for m in store.memories(until=ORIGIN + 29.9)] == ids[:2]
    assert [m["id"] for m in store.memories(search="red cup")] == [ids[0], ids[2]]
    assert [m["id"] for m in store.memories(search="red shelf")] == []  # every word must be there
    assert [m["id"] for m in store.memories(search="cups")] == [ids[0], ids[2]]  # porter stemming
    assert store.memories(search="   ") == []
    assert len(store.memories(limit=2)) == 2
    assert store.memories(stream_id=sid + 1) == []


@pytest.mark.parametrize("query", [
    'red "cup', 'cup"', '"', "red AND", "OR cup", "NOT cup", "NEAR(cup table)", "cup*", "*", "text:cup",
    "cup:", "(cup", "cup)", "^cup", "cup -table", "red + cup", "cup\x00table", "\udcff\udcfe cup",
    "\ud800 cup", "'; DROP TABLE memories; --", "", "   ", "????", "cup's", "{text}: cup", "cup AND OR NOT",
])
def test_fts_search_accepts_any_text(filled, query):
    store, _, ids = filled
    hits = store.fts_search(query, 10)
    assert all(mid in ids for mid, _ in hits)
    if "cup" in query:
        assert {mid for mid, _ in hits} >= {ids[0], ids[2]}
    assert len(store.memories()) == len(TEXTS)  # nothing was harmed
    store.memories(search=query)  # the AND form is as safe


def test_match_expression_quotes_every_token():
    assert match_expression('red "cup" OR NOT x*') == '"red" OR "cup" OR "not" OR "x"'
    # function words are left out of a question's OR query unless nothing else remains
    assert match_expression("where did I leave the cup?") == '"leave" OR "cup"'
    assert match_expression("where is it") == '"where" OR "is" OR "it"'
    assert match_expression("red cup", "AND") == '"red" AND "cup"'
    assert match_expression("?!") is None


def test_fts_bm25_ranking_and_time_filter(filled):
    store, _, ids = filled
    hits = store.fts_search("red cup sink", 3)
    assert hits[0][0] == ids[2]  # matches all three words
    assert hits[1][0] == ids[0]
    assert hits[0][1] > hits[1][1] > 0
    assert [m for m, _ in store.fts_search("red cup sink", 3, until=ORIGIN + 20)] == [ids[0]]
    assert [m for m, _ in store.fts_search("red cup sink", 3, since=ORIGIN + 10)] == [ids[2]]
    assert store.fts_search("red", 0) == []


def test_fts_kept_in_step_by_triggers(filled):
    store, _, ids = filled
    assert fts_consistent(store)
    store.conn.execute("UPDATE memories SET text = 'I feed the orange cat.' WHERE id = ?", (ids[0],))
    assert [m for m, _ in store.fts_search("cat", 5)] == [ids[0]]
    assert ids[0] not in [m for m, _ in store.fts_search("kitchen", 5)]
    store.conn.execute("DELETE FROM memories WHERE id = ?", (ids[1],))
    assert store.fts_search("book", 5) == []
    assert fts_consistent(store)


def test_non_utf8_text_is_stored_safely(store):
    sid = store.get_or_create_stream("s\udcff", "fp\udcff", 0.0, "file")
    _, mid = commit(store, sid, 0, "caf\udce9 near the door")
    assert store.get_memories([mid])[0]["text"] == "caf\ufffd near the door"
    qid = store.add_question("where\udcff is it?", ["A\udcff"], 1.0)
    aid = store.add_answer(qid, choice="A", text="x\ud800", abstained=False, cited=[mid], model="m", adapter_id=None)
    assert store.get_answer(aid)["question"] == "where\ufffd is it?"


def test_embeddings_roundtrip(filled):
    store, _, ids = filled
    assert [r["id"] for r in store.memories_without_embedding("mini")] == ids
    vecs = np.arange(len(ids) * 3, dtype=np.float32).reshape(len(ids), 3)
    assert store.put_embeddings("mini", ids, vecs) == len(ids)
    got_ids, mat = store.embeddings("mini")
    assert got_ids == ids and mat.dtype == np.float32
    np.testing.assert_array_equal(mat, vecs)
    assert store.memories_without_embedding("mini") == []
    assert store.memories_without_embedding("other", limit=2) == store.memories()[:2]
    sub_ids, sub = store.embeddings("mini", until=ORIGIN + 20)
    assert sub_ids == ids[:2] and sub.shape == (2, 3)
    assert store.put_embedding(ids[0], "mini", np.ones(3)) is True  # replaces
    np.testing.assert_array_equal(store.embeddings("mini")[1][0], np.ones(3))
    assert store.put_embedding(12345, "mini", np.ones(3)) is False  # no such memory (forgotten meanwhile)
    assert store.embeddings("none") == ([], pytest.approx(np.zeros((0, 0))))


def test_questions_answers_feedback(filled):
    store, _, ids = filled
    qid = store.add_question("Where is the red cup?", ["on the table", "in the sink"], ORIGIN + 100)
    aid = store.add_answer(qid, choice="A", text="on the table", abstained=False, cited=[ids[0]],
                           model="tiny", adapter_id=None, shown=[ids[2], ids[0], 999])
    row = store.get_answer(aid)
    assert row["question"] == "Where is the red cup?"
    assert row["options"] == ["on the table", "in the sink"]
    assert row["choice"] == "A" and row["abstained"] is False
    assert row["citations"] == [{"id": ids[0], "t_start": ORIGIN, "t_end": ORIGIN + 10, "text": TEXTS[0]}]
    assert row["shown"] == [ids[2], ids[0]]  # 999 does not exist: skipped
    fid = store.add_feedback(aid, False, "in the sink")
    assert store.get_answer(aid)["feedback"][0]["correct"] is False
    fb = store.feedback()
    assert fb[0]["id"] == fid and fb[0]["corrected"] == "in the sink" and fb[0]["question"] == row["question"]
    assert [a["id"] for a in store.answers(with_feedback=True)] == [aid]
    with pytest.raises(StoreError, match="answer 777"):
        store.add_feedback(777, True)
    with pytest.raises(StoreError, match="answer 777"):
        store.get_answer(777)
    with pytest.raises(StoreError, match="question 555"):
        store.add_answer(555, choice=None, text="x", abstained=True, cited=[], model="m", adapter_id=None)


def phase_two(store, sid, ids, tmp_path):
    seg = store.memories()[0]["segment_id"]
    c1 = store.add_candidate(seg, "I put the red cup on the kitchen table.", valid=True, failure=None,
                             sampling={"temperature": 0.6}, source="sampled")
    c2 = store.add_candidate(seg, "A room.", valid=True, failure=None, sampling={"temperature": 0.6},
                             source="sampled")
    qid = store.add_question("Where is the red cup?", [], ORIGIN + 100)
    aid = store.add_answer(qid, choice=None, text="table", abstained=False, cited=[ids[0]], model="m",
                           adapter_id=None, shown=[ids[0]])
    fid = store.add_feedback(aid, True)
    frame = tmp_path / "f0.png"
    frame.write_bytes(b"png")
    fr = store.keep_frames(seg, [frame], ORIGIN + 86400)
    pid = store.add_pair(c1, c2, [fid], 0.8, "train")
    return seg, c1, c2, fid, fr, pid, frame


def test_candidates_frames_pairs(filled, tmp_path):
    store, sid, ids = filled
    seg, c1, c2, fid, fr, pid, frame = phase_two(store, sid, ids, tmp_path)
    cands = store.candidates(segment_id=seg)
    assert [c["id"] for c in cands] == [c1, c2]
    assert cands[0]["sampling"] == {"temperature": 0.6} and cands[0]["valid"] is True
    assert cands[0]["t_start"] == ORIGIN and cands[0]["idx"] == 0
    assert store.candidates(ids=[c2])[0]["text"] == "A room."
    p = store.pairs()[0]
    assert (p["id"], p["chosen_candidate_id"], p["rejected_candidate_id"], p["feedback_ids"], p["split"]) == \
        (pid, c1, c2, [fid], "train")
    assert p["chosen_text"].startswith("I put") and p["segment_id"] == seg
    assert store.pairs(split="holdout") == []
    assert store.expired_frames(ORIGIN) == []
    assert [f["id"] for f in store.expired_frames(ORIGIN + 86400)] == fr
    assert store.delete_kept_frames(fr) == 1
    assert not frame.exists() and store.kept_frames() == []
    with pytest.raises(StoreError):
        store.add_pair(c1, 9999, [fid], 0.1, "train")
    with pytest.raises(StoreError):
        store.add_pair(c1, c2, [9999], 0.1, "train")
    with pytest.raises(ValueError):
        store.add_pair(c1, c2, [fid], 0.1, "test")
    with pytest.raises(StoreError, match="segment 999"):
        store.add_candidate(999, "x", valid=False, failure="f", sampling={}, source="s")


def test_deleting_feedback_removes_derived_pairs(filled, tmp_path):
    store, sid, ids = filled
    *_, fid, _, pid, _ = phase_two(store, sid, ids, tmp_path)
    assert store.delete_feedback([fid]) == {"feedback": 1, "pairs": 1}
    assert store.pairs() == [] and store.feedback() == []
    assert len(store.candidates()) == 2  # candidates are not derived from feedback


def test_adapters_registry(store):
    store.add_adapter({"id": "a1", "path": "/x/a1.safetensors", "layer": 22, "scale": 1.5,
                       "base_model_hash": "h", "pair_ids": [1, 2], "feedback_ids": [3],
                       "metrics": {"holdout_acc": 0.75}, "notes": "anything else"})
    a1 = store.get_adapter("a1")
    assert a1["status"] == "candidate" and a1["pair_ids"] == [1, 2] and a1["metrics"] == {"holdout_acc": 0.75}
    assert a1["notes"] == "anything else"
    assert store.active_adapter() is None
    store.activate("a1")
    assert store.active_adapter()["id"] == "a1"
    store.add_adapter({"id": "a2", "status": "active"})
    assert store.active_adapter()["id"] == "a2"
    assert store.get_adapter("a1")["status"] == "inactive"
    assert store.get_adapter("a2")["previous_id"] == "a1"
    store.add_adapter({"id": "a3"})
    store.set_adapter_status("a3", "rejected", "held-out accuracy fell 0.60 -> 0.55")
    assert store.get_adapter("a3")["reason"].startswith("held-out")
    assert store.active_adapter()["id"] == "a2"  # a rejected adapter changes nothing
    assert store.rollback_adapter()["id"] == "a1"
    assert store.get_adapter("a2")["status"] == "rolled_back"
    assert store.rollback_adapter() is None  # a1 had no predecessor: base model
    assert store.active_adapter() is None
    with pytest.raises(StoreError, match="no adapter is active"):
        store.rollback_adapter()
    with pytest.raises(StoreError, match="already registered"):
        store.add_adapter({"id": "a1"})
    with pytest.raises(StoreError, match="status='bogus'"):
        store.set_adapter_status("a1", "bogus")
    with pytest.raises(StoreError, match="no such adapter"):
        store.activate("zzz")
    assert [a["id"] for a in store.adapters()] == ["a1", "a2", "a3"]


def test_forget_cascades(filled, tmp_path):
    store, sid, ids = filled
    seg, c1, c2, fid, fr, pid, frame = phase_two(store, sid, ids, tmp_path)
    store.put_embeddings("mini", ids, np.ones((len(ids), 4), np.float32))
    # A pair built on another segment's candidates but from feedback on an answer citing memory 0.
    seg4 = store.memories()[4]["segment_id"]
    d1 = store.add_candidate(seg4, "keys on shelf", valid=True, failure=None, sampling={}, source="sampled")
    d2 = store.add_candidate(seg4, "a shelf", valid=True, failure=None, sampling={}, source="sampled")
    pid2 = store.add_pair(d1, d2, [fid], 0.5, "holdout")
    counts = store.forget(since=ORIGIN, until=ORIGIN + 15)  # overlaps segments 0 and 1
    assert counts == {"memories": 2, "embeddings": 2, "citations": 1, "segments": 2, "candidates": 2,
                      "pairs": 2, "kept_frames": 1, "frame_files": 1, "frame_folders": 0, "scrub_pending": 0}
    assert not frame.exists()
    assert [m["id"] for m in store.memories()] == ids[2:]
    assert store.fts_search("kitchen", 5) == [] and store.fts_search("book", 5) == []
    assert fts_consistent(store)
    assert store.embeddings("mini")[0] == ids[2:]
    assert store.pairs() == [] and {c["id"] for c in store.candidates()} == {d1, d2}
    assert store.kept_frames() == []
    answer = store.answers()[0]
    assert answer["citations"] == [] and answer["question"] == "Where is the red cup?"
    segs = store.segments(sid)
    assert [s["status"] for s in segs] == ["forgotten", "forgotten", "written", "written", "written"]
    assert store.last_committed_segment(sid) == 4  # a re-run does not write the forgotten range again
    assert store.conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert store.forget() ["memories"] == 3
    assert store.memories() == []
