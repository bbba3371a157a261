"""Multiple choice by likeness: the option most like a sentence of the memories the moment or colour route found."""

import json

import pytest

from edge_agent.config import QAConfig
from edge_agent.qa.answer import BY_LIKENESS, answer
from edge_agent.qa.match import likeliest_option, matched_memories, sentences
from edge_agent.vlm.fake import ScriptedBackend
from test_qa_retrieve import CountingEmbedder, ten_second_memories

TEXTS = ["I was cooking at the counter in the kitchen.",                            # 0-10 s
         "I was washing dishes at the sink in the kitchen.",                        # 10-20 s
         "I put the green bowl on the shelf. I walked into the living room.",       # 20-30 s
         "I put the red cup on the table in the living room.",                      # 30-40 s
         "I was watching tv in the living room."]                                   # 40-50 s
DOING = ["cooking at the counter in the kitchen", "watching tv in the living room",
         "washing dishes at the sink in the kitchen", "folding clothes on the bed in the bedroom"]
COLOURS = ["green", "blue", "yellow", "red"]
ON = QAConfig(top_k=8, moment_k=3, colour_k=3, match_options=True)


@pytest.fixture
def store(tmp_path):
    s = ten_second_memories(tmp_path, TEXTS)
    yield s
    s.close()


def test_a_moment_is_answered_by_the_option_most_like_its_own_memory(store):
    """At 0:15 the wearer washed dishes: the option most like the memory of that moment, not of its neighbours
    (cooking before, the bowl after; all three are shown), cited by it; no model is asked."""
    backend = ScriptedBackend([])  # any model call would fail: the script is empty
    res = answer(store, backend, "What was I doing at 0:15 into the recording?", DOING, asked_at=100.0, cfg=ON,
                 embedder=CountingEmbedder())
    assert res["choice"] == "C" and res["text"] == DOING[2] and res["reason"] == BY_LIKENESS
    assert [c["t_start"] for c in res["citations"]] == [10.0] and len(res["shown"]) == 3
    late = answer(store, backend, "What was I doing at 0:45 into the recording?", DOING, asked_at=100.0, cfg=ON,
                  embedder=CountingEmbedder())
    assert late["choice"] == "B" and [c["t_start"] for c in late["citations"]] == [40.0]
    assert not backend.calls


def test_a_colour_is_answered_by_the_option_most_like_the_memories_naming_the_thing(store):
    """The green bowl's memory shares "the shelf" with the question, but only the cup's memory names a cup."""
    res = answer(store, ScriptedBackend([]), "What colour was the cup I put on the table?", COLOURS, asked_at=100.0,
                 cfg=ON, embedder=CountingEmbedder())
    assert res["choice"] == "D" and [c["t_start"] for c in res["citations"]] == [30.0]


def test_off_another_route_or_no_embedder_leaves_the_answer_to_the_model(store):
    reply = json.dumps({"answer": "A", "citations": []})
    backend = ScriptedBackend([reply] * 3)
    q = "What was I doing at 0:15 into the recording?"
    off = answer(store, backend, q, DOING, asked_at=100.0, cfg=QAConfig(top_k=8, moment_k=3),
                 embedder=CountingEmbedder())
    no_minilm = answer(store, backend, q, DOING, asked_at=100.0,
                       cfg=QAConfig(top_k=8, moment_k=3, match_options=True, use_embeddings=False))
    where = answer(store, backend, "Where did I leave the red cup?", ["on the table", "on the shelf"],
                   asked_at=100.0, cfg=QAConfig(top_k=8, latest_k=1, match_options=True),
                   embedder=CountingEmbedder())
    assert off["choice"] == no_minilm["choice"] == where["choice"] == "A" and len(backend.calls) == 3
    assert off["reason"] is None
    open_question = answer(store, ScriptedBackend([json.dumps({"answer": "washing", "citations": []})]), q, [],
                           asked_at=100.0, cfg=ON, embedder=CountingEmbedder())
    assert open_question["text"] == "washing"  # open questions are the model's: there are no options to match


def test_which_memories_are_matched_and_sentences():
    moment = [{"id": 1, "text": "a.", "route": "moment"}, {"id": 2, "text": "b.", "route": "moment"}]
    colour = [{"id": 3, "text": "c.", "route": "colour"}, {"id": 4, "text": "d.", "route": "colour"}]
    assert matched_memories(moment) == moment[:1] and matched_memories(colour) == colour
    assert matched_memories([{"id": 5, "text": "e.", "route": "where"}]) == []
    assert matched_memories([{"id": 6, "text": "f.", "route": None}]) == [] == matched_memories([])
    assert sentences('I met <face_1>. I read a note that said "PIN 12".  ') == [
        "I met <face_1>.", 'I read a note that said "PIN 12".']
    assert likeliest_option(CountingEmbedder(), ["x"], [{"id": 7, "text": "  "}]) is None
