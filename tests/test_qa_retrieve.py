"""Retrieval: RRF of BM25 and embedding ranks, time filters (never the future), memories embedded once."""

import zlib

import numpy as np
import pytest

from edge_agent.config import QAConfig
from edge_agent.qa.embed import minilm_available
from edge_agent.qa.retrieve import ensure_embeddings, fuse, retrieve
from edge_agent.store import Store
from edge_agent.store.text import tokens
from edge_agent.types import Segment


class CountingEmbedder:
    """Bag of words hashed into 64 dims, with a synonym table so some matches are embedding-only."""

    name = "counting-bow"
    SYNONYMS = {"phone": "mobile", "couch": "sofa", "auto": "car"}

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen += list(texts)
        out = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            for tok in tokens(t):
                tok = self.SYNONYMS.get(tok, tok)
                out[i, zlib.crc32(tok.encode()) % 64] += 1.0  # stable across runs
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


TEXTS = [
    "I put the red cup on the kitchen table.",
    "I set the mobile down on the sofa.",
    "<face_1> hands me a blue book near the shelf.",
    "I wash the red cup at the sink.",
    "I drive the car out of the garage.",
    "I leave the red cup on the shelf.",  # the latest word on the cup, in the "future" of some tests
]


def ten_second_memories(tmp_path, texts):
    """A store with one memory per 10-second segment of a stream starting at 0, in order."""
    s = Store.open(tmp_path / "t.db")
    sid = s.get_or_create_stream("clip", "fp-ten", 0.0, "synthetic")
    for i, text in enumerate(texts):
        s.commit_segment(sid, Segment(i, 10.0 * i, 10.0 * i + 10), memory=text, failure=None, writer_model="m",
                         adapter_id=None, n_tokens=8, latency_s=0.0)
    return s


@pytest.fixture
def store(tmp_path):
    s = ten_second_memories(tmp_path, TEXTS)
    yield s
    s.close()


def test_rrf_by_hand():
    fused = fuse([[1, 2, 3], [3, 1]], 60)
    assert [i for i, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1][1] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2][1] == pytest.approx(1 / 62)
    assert fuse([], 60) == []


def test_fusion_finds_embedding_only_matches(store):
    emb = CountingEmbedder()
    cfg = QAConfig(top_k=3)
    rows = retrieve(store, "where is my phone?", cfg, embedder=emb)
    texts = [r["text"] for r in rows]
    assert "I set the mobile down on the sofa." in texts  # no word in common but "phone" ~ "mobile"
    assert len(rows) == 3 and rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    fts_only = retrieve(store, "where is my phone?", QAConfig(top_k=3, use_embeddings=False), embedder=emb)
    assert "I set the mobile down on the sofa." not in [r["text"] for r in fts_only]


def test_bm25_and_embedding_agree_on_the_best(store):
    rows = retrieve(store, "red cup sink", QAConfig(top_k=2), embedder=CountingEmbedder())
    assert rows[0]["text"] == "I wash the red cup at the sink."


def test_until_never_returns_the_future(store):
    emb = CountingEmbedder()
    for until in (15.0, 30.0, 45.0, 59.9):
        rows = retrieve(store, "red cup shelf", QAConfig(top_k=10), until=until, embedder=emb)
        assert rows and all(r["t_end"] <= until for r in rows)
        assert "I leave the red cup on the shelf." not in [r["text"] for r in rows]
    rows = retrieve(store, "red cup shelf", QAConfig(top_k=10), since=30.0, embedder=emb)
    assert all(r["t_end"] > 30.0 for r in rows) and rows[0]["text"] == "I leave the red cup on the shelf."
    assert retrieve(store, "red cup", QAConfig(), until=5.0, embedder=emb) == []


def test_memories_are_embedded_once(store):
    emb = CountingEmbedder()
    retrieve(store, "red cup", QAConfig(), until=25.0, embedder=emb)
    assert sorted(emb.seen) == sorted(TEXTS[:2] + ["red cup"])  # lazily: only what the range covers
    emb.seen.clear()
    retrieve(store, "blue book", QAConfig(), embedder=emb)
    assert sorted(emb.seen) == sorted(TEXTS[2:] + ["blue book"])
    emb.seen.clear()
    retrieve(store, "garage", QAConfig(), embedder=emb)
    assert emb.seen == ["garage"]
    assert ensure_embeddings(store, emb) == 0
    assert len(store.embeddings(emb.name)[0]) == len(TEXTS)


def test_top_k_and_hostile_questions(store):
    emb = CountingEmbedder()
    assert len(retrieve(store, "the", QAConfig(top_k=2), embedder=emb)) == 2
    for q in ['"red cup" AND NOT (sink*', "NEAR(cup", "\udcff\udcfe", "", "text: cup"]:
        rows = retrieve(store, q, QAConfig(top_k=3), embedder=emb)
        assert len(rows) <= 3


@pytest.mark.skipif(not minilm_available(), reason="MiniLM not installed")
def test_with_minilm(store, tmp_path):
    from edge_agent.qa.embed import MiniLM

    rows = retrieve(store, "Where did I put down my cell phone?", QAConfig(top_k=2), embedder=MiniLM(tmp_path))
    assert "I set the mobile down on the sofa." in [r["text"] for r in rows]


def many_memories(tmp_path, origin: float, n: int = 60) -> Store:
    """n ten-second memories of one stream from `origin`, all alike but for their time: only time can tell them."""
    s = Store.open(tmp_path / "t.db")
    sid = s.get_or_create_stream("clip", "fp-time", origin, "synthetic")
    for i in range(n):
        s.commit_segment(sid, Segment(i, 10.0 * i, 10.0 * i + 10), memory=f"I looked around the room {'ab'[i % 2]}.",
                         failure=None, writer_model="m", adapter_id=None, n_tokens=8, latency_s=0.0)
    return s


def test_memories_near_a_time_come_closest_first_and_respect_the_time_filter(tmp_path):
    s = many_memories(tmp_path, 0.0)
    near = s.memories_near(427.0, 3)
    assert [d for _, d in near] == [0.0, 3.0, 7.0]  # inside 420-430, then 430-440 (3 s away), then 410-420 (7 s)
    assert [r["t_start"] for r in s.get_memories([m for m, _ in near])] == [420.0, 430.0, 410.0]
    assert all(r["t_end"] <= 300 for r in s.get_memories([m for m, _ in s.memories_near(427.0, 5, until=300.0)]))
    assert s.memories_near(427.0, 0) == []
    s.close()


def test_a_question_about_a_moment_is_shown_the_memories_of_that_moment(tmp_path):
    """No word of "what was I doing at 7:07 into the recording" is in any memory, so text ranks cannot find the
    moment; the time it names does, on a replay's stream clock and as an offset into a live recording."""
    cfg = QAConfig(top_k=4, use_embeddings=False)
    s = many_memories(tmp_path, 0.0)
    for q in ("What was I doing at 7:07 into the recording?", "What was I doing at 00:07:07?",
              "What was I doing 3 minutes ago?"):  # asked at 600 s: 420 s
        rows = retrieve(s, q, cfg, until=600.0, asked_at=600.0)
        assert 420.0 in [r["t_start"] for r in rows], (q, [r["t_start"] for r in rows])
    assert 420.0 not in [r["t_start"] for r in retrieve(s, "What was I doing then?", cfg, until=600.0)]
    s.close()

    live = 1_780_000_000.0  # a live recording: epoch seconds; its origin is the stream's start
    (tmp_path / "live").mkdir()
    s = many_memories(tmp_path / "live", live)
    rows = retrieve(s, "what was I doing 7:07 into the recording", cfg, asked_at=live + 600)
    assert live + 420.0 in [r["t_start"] for r in rows]
    assert s.latest_origin(live - 1) is None and s.latest_origin() == live
    s.close()


def test_moment_k_shows_a_question_about_a_moment_only_the_memories_nearest_it(tmp_path):
    """qa.moment_k: "at 7:07" (427 s) is shown the 3 memories nearest it, closest first, and nothing the text
    ranks bring; a question that names no time is retrieved as before; the no-future filter still holds."""
    s = many_memories(tmp_path, 0.0)
    cfg = QAConfig(top_k=8, moment_k=3, use_embeddings=False)
    rows = retrieve(s, "What was I doing at 7:07 into the recording?", cfg, until=600.0, asked_at=600.0)
    assert [r["t_start"] for r in rows] == [420.0, 430.0, 410.0]
    assert rows[0]["score"] > rows[1]["score"] > rows[2]["score"]
    mixed = retrieve(s, "What was I doing at 7:07 into the recording?", QAConfig(top_k=8, use_embeddings=False),
                     until=600.0, asked_at=600.0)
    assert len(mixed) == 4 and 420.0 in [r["t_start"] for r in mixed]  # moment_k 0: half of top_k from the moment
    plain = "Where did I look around the room a?"
    assert ([r["id"] for r in retrieve(s, plain, cfg, until=600.0)]
            == [r["id"] for r in retrieve(s, plain, QAConfig(top_k=8, use_embeddings=False), until=600.0)])
    assert len(retrieve(s, plain, cfg, until=600.0)) == 8
    early = retrieve(s, "What was I doing at 7:07 into the recording?", cfg, until=300.0, asked_at=600.0)
    assert [r["t_start"] for r in early] == [290.0, 280.0, 270.0]  # nothing after `until`
    s.close()


def test_latest_k_shows_where_a_thing_was_left_by_the_latest_memories_that_name_it(tmp_path):
    """qa.latest_k: "where did I leave the blue keys?" is shown the latest memory naming the blue keys (their last
    put-down), not the earlier ones that share more of its words, nor the red keys' or a later one after `until`;
    a thing no memory names, or a question of another kind, is retrieved as before."""
    texts = ["I picked up the blue keys from the sink. Where did I leave the blue keys, I wondered.",
             "I put the blue keys on the desk in the office.", "I looked around the office.",
             "I put the red keys on the bed.", "I moved the blue keys from the desk to the shelf."]
    s = ten_second_memories(tmp_path, texts)
    cfg = QAConfig(top_k=8, latest_k=1, use_embeddings=False)
    q = "Where did I leave the blue keys?"
    assert [r["text"] for r in retrieve(s, q, cfg, until=100.0)] == [texts[4]]
    assert [r["text"] for r in retrieve(s, q, cfg, until=40.0)] == [texts[1]]  # the move came after `until`
    two = retrieve(s, q, QAConfig(top_k=8, latest_k=2, use_embeddings=False), until=100.0)
    assert [r["text"] for r in two] == [texts[4], texts[1]] and two[0]["score"] > two[1]["score"]
    plain = retrieve(s, q, QAConfig(top_k=8, use_embeddings=False), until=100.0)
    assert plain[0]["text"] == texts[0] and len(plain) == 4  # latest_k 0: BM25 ranks the wondering first
    assert len(retrieve(s, "Where did I leave the green cup?", cfg, until=100.0)) == len(
        retrieve(s, "Where did I leave the green cup?", QAConfig(top_k=8, use_embeddings=False), until=100.0))
    assert len(retrieve(s, "What did I put on the bed?", cfg, until=100.0)) > 1
    s.close()


def test_latest_k_shows_who_was_met_in_a_room_by_the_latest_memories_naming_a_person_there(tmp_path):
    """qa.latest_k: "who did I meet most recently in the kitchen?" is shown the latest memory that names a person
    (<face_N>) and the kitchen, not the kitchen's other memories nor a meeting elsewhere or after `until`."""
    texts = ["I met <face_1> in the kitchen.", "I was washing dishes at the sink in the kitchen.",
             "I met <face_2> in the kitchen.", "I put the red cup on the table in the kitchen.",
             "I met <face_3> in the office.", "I met <face_1> in the kitchen."]
    s = ten_second_memories(tmp_path, texts)
    cfg = QAConfig(top_k=8, latest_k=1, use_embeddings=False)
    q = "Who did I meet most recently in the kitchen?"
    assert [r["text"] for r in retrieve(s, q, cfg, until=55.0)] == [texts[2]]  # the later one is after `until`
    assert [r["text"] for r in retrieve(s, q, cfg, until=100.0)] == [texts[5]]
    assert [r["text"] for r in retrieve(s, "Who did I meet in the office?", cfg, until=100.0)] == [texts[4]]
    # nobody met in the bedroom: retrieved as any question; latest_k 0: the text ranks decide
    assert len(retrieve(s, "Who did I meet in the bedroom?", cfg, until=100.0)) == len(
        retrieve(s, "Who did I meet in the bedroom?", QAConfig(top_k=8, use_embeddings=False), until=100.0))
    assert len(retrieve(s, q, QAConfig(top_k=8, use_embeddings=False), until=100.0)) > 1
    s.close()


def test_colour_k_shows_what_colour_a_thing_was_by_the_latest_memories_that_name_it(tmp_path):
    """qa.colour_k: "what colour was the cup I put on the shelf?" is shown the latest memories naming a cup, not
    the memories of the shelf that share more of its words and name other things' colours, nor one after `until`;
    a thing no memory names (a shirt), or colour_k 0, is retrieved as before."""
    texts = ["I put the green bowl on the shelf in the kitchen.", "I put the red cup on the shelf in the kitchen.",
             "I put the blue book on the shelf in the kitchen.", "I looked around the kitchen.",
             "I picked up the red cup from the shelf in the kitchen.", "I put the yellow cup on the shelf."]
    s = ten_second_memories(tmp_path, texts)
    q = "What colour was the cup I put on the shelf in the kitchen?"
    plain = QAConfig(top_k=8, use_embeddings=False)
    two = retrieve(s, q, QAConfig(top_k=8, colour_k=2, use_embeddings=False), until=55.0)
    assert [r["text"] for r in two] == [texts[4], texts[1]]  # the yellow cup came after `until`
    assert two[0]["score"] > two[1]["score"]
    assert [r["text"] for r in retrieve(s, q, QAConfig(top_k=8, colour_k=1, use_embeddings=False),
                                        until=100.0)] == [texts[5]]
    assert len(retrieve(s, q, plain, until=55.0)) == 5  # colour_k 0: every shelf memory shares the words
    shirt = "What colour was the shirt of <face_1> I met in the kitchen?"
    assert ([r["id"] for r in retrieve(s, shirt, QAConfig(top_k=8, colour_k=2, use_embeddings=False), until=100.0)]
            == [r["id"] for r in retrieve(s, shirt, plain, until=100.0)])
    # latest_k alone does not touch colour questions, nor colour_k "where did I leave X?"
    assert len(retrieve(s, q, QAConfig(top_k=8, latest_k=1, use_embeddings=False), until=55.0)) == 5
    where = "Where did I leave the red cup?"
    assert ([r["id"] for r in retrieve(s, where, QAConfig(top_k=8, colour_k=1, use_embeddings=False), until=100.0)]
            == [r["id"] for r in retrieve(s, where, plain, until=100.0)])
    s.close()
