"""Which of its options the wearer did first or last, told by the times of the memories most like each option."""

import json

import pytest

from edge_agent.config import QAConfig
from edge_agent.qa.answer import BY_TIME, answer
from edge_agent.qa.order import Match, option_matches, order_asked, ordered_choice
from edge_agent.vlm.fake import ScriptedBackend
from test_qa_retrieve import CountingEmbedder, ten_second_memories

TEXTS = ["I read a note at the door in the bedroom.",               # 0-10 s
         "I picked up the red keys from the bed in the bedroom.",   # 10-20 s
         "I walked into the kitchen.",                              # 20-30 s
         "I was washing dishes at the sink in the kitchen.",        # 30-40 s
         "I put the red keys on the table in the kitchen."]         # 40-50 s
OPTIONS = ["washed dishes at the sink in the kitchen", "walked into the kitchen",
           "picked up the red keys from the bed in the bedroom", "put the red keys on the table in the kitchen"]


@pytest.fixture
def store(tmp_path):
    s = ten_second_memories(tmp_path, TEXTS)
    yield s
    s.close()


@pytest.mark.parametrize("question,word", [
    ("Which of these did I do first?", "first"), ("which of them did I do earliest?", "first"),
    ("Which of these did I do last?", "last"), ("Which one did I do most recently?", "last"),
    ("Which of the following did I do latest?", "last"),
    ("What did I do first this morning?", None), ("Where did I leave the keys last?", None),
    ("Which room did I walk into first?", None)])
def test_the_questions_it_reads(question, word):
    assert order_asked(question) == word


@pytest.mark.parametrize("embedder", [CountingEmbedder(), None], ids=["embeddings", "fts5"])
def test_the_option_whose_memory_comes_first_or_last_is_the_answer_and_cites_it(store, embedder):
    """No model is asked: each option is matched to its memory, and the clock decides; the options' memories are
    what was shown. The options are not in time order, so a constant letter or the first listed would be wrong."""
    cfg = QAConfig(top_k=8, order_by_time=True, use_embeddings=embedder is not None)
    by_text = {m["text"]: m["id"] for m in store.memories()}
    backend = ScriptedBackend([])  # any model call would fail the test: the script is empty
    first = answer(store, backend, "Which of these did I do first?", OPTIONS, asked_at=100.0, cfg=cfg,
                   embedder=embedder)
    assert first["choice"] == "C" and first["text"] == OPTIONS[2] and not first["abstained"]
    assert first["reason"] == BY_TIME and store.get_answer(first["answer_id"])["reason"] == BY_TIME
    assert [c["id"] for c in first["citations"]] == [by_text[TEXTS[1]]]
    assert sorted(first["shown"]) == sorted(by_text[t] for t in TEXTS[1:])
    last = answer(store, backend, "Which of these did I do last?", OPTIONS, asked_at=100.0, cfg=cfg,
                  embedder=embedder)
    assert last["choice"] == "D" and [c["id"] for c in last["citations"]] == [by_text[TEXTS[4]]]
    # nothing after `until` is matched: at 45 s the keys were not yet put down (its memory ends at 50 s), so the
    # latest of the options' memories is the washing's
    early = answer(store, backend, "Which of these did I do last?", OPTIONS, asked_at=45.0, until=45.0, cfg=cfg,
                   embedder=embedder)
    assert early["choice"] == "A" and all(c["t_end"] <= 45.0 for c in early["citations"])
    assert not backend.calls
    assert store.get_answer(last["answer_id"])["choice"] == "D"


def test_off_or_another_question_goes_to_retrieval_and_the_model(store):
    """With qa.order_by_time off (the default), or for a question it does not read, the model answers as before.
    (Off, the bare "which of these did I do first?" shares no word with any memory: no memory is found.)"""
    reply = json.dumps({"answer": "B", "citations": []})
    backend = ScriptedBackend([reply, reply])
    off = answer(store, backend, "Which of these did I do first in the kitchen?", OPTIONS, asked_at=100.0,
                 cfg=QAConfig(top_k=8, use_embeddings=False))
    assert answer(store, backend, "Which of these did I do first?", OPTIONS, asked_at=100.0,
                  cfg=QAConfig(top_k=8, use_embeddings=False))["reason"] == "no memories match the question"
    other = answer(store, backend, "Where did I put the red keys?", OPTIONS, asked_at=100.0,
                   cfg=QAConfig(top_k=8, order_by_time=True, use_embeddings=False))
    assert off["choice"] == other["choice"] == "B" and len(backend.calls) == 2


def test_options_in_one_memory_go_by_their_sentences_then_by_likeness_and_none_without_memories(store):
    one, later = {"id": 7, "t_start": 10.0}, {"id": 9, "t_start": 30.0}
    assert ordered_choice("first", [Match(later, 0, 0.9), Match(one, 1, 0.9), Match(one, 0, 0.4)]) == 2
    assert ordered_choice("last", [Match(one, 1, 0.2), Match(one, 0, 0.9)]) == 0
    assert ordered_choice("first", [Match(one, 0, 0.4), Match(one, 0, 0.8)]) == 1  # one sentence: the more alike
    assert ordered_choice("last", [None, Match(later, 0, 0.1), Match(one, 0, 0.8)]) == 1
    assert ordered_choice("first", [None, None]) is None
    assert option_matches(store, ["walked into the garage"], None, until=5.0) == [None]  # before any memory ended


def test_two_events_in_one_memory_are_ordered_as_its_sentences_tell_them(tmp_path):
    """One segment's memory tells the note, then the meeting: the meeting came last."""
    s = ten_second_memories(tmp_path, ["I walked into the office.",
                                       "I read a note at the door in the office. I met <face_2> in the office."])
    opts = ["met <face_2> in the office", "read the note at the door in the office", "walked into the office"]
    cfg = QAConfig(top_k=8, order_by_time=True)
    res = answer(s, ScriptedBackend([]), "Which of these did I do last?", opts, asked_at=100.0, cfg=cfg,
                 embedder=CountingEmbedder())
    assert res["choice"] == "A" and [c["t_start"] for c in res["citations"]] == [10.0]
    s.close()


@pytest.mark.parametrize("embedder", [CountingEmbedder(), None], ids=["embeddings", "fts5"])
def test_an_activity_written_over_several_segments_is_dated_by_when_it_began(tmp_path, embedder):
    """Three memories say the same thing (one activity over three segments): the option is dated by the first of
    them, so reading the note in the middle of the watching came after it, not before."""
    texts = ["I walked into the living room.", "I was watching tv in the living room.",
             "I was watching tv in the living room.", "I read a note at the door in the living room.",
             "I was watching tv in the living room."]
    s = ten_second_memories(tmp_path, texts)
    cfg = QAConfig(top_k=8, order_by_time=True, use_embeddings=embedder is not None)
    opts = ["read the note at the door in the living room", "watched tv in the living room"]
    res = answer(s, ScriptedBackend([]), "Which of these did I do first?", opts, asked_at=100.0, cfg=cfg,
                 embedder=embedder)
    assert res["choice"] == "B" and [c["t_start"] for c in res["citations"]] == [10.0]
    s.close()
