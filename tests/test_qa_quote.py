"""Words the wearer saw: answered by the one option a shown memory quotes, "not in memory" when none does."""

import json

import pytest

from edge_agent.config import QAConfig
from edge_agent.qa.answer import BY_QUOTE, NOT_QUOTED, answer
from edge_agent.qa.quote import quoted_options, words_asked
from edge_agent.vlm.fake import ScriptedBackend
from test_qa_retrieve import ten_second_memories

TEXTS = ['I read a note at the fridge in the kitchen that said "BUY MILK".',       # 0-10 s
         "I was washing dishes at the sink in the kitchen.",                         # 10-20 s
         'I read a note at the door in the office that said "PIN 4821".',           # 20-30 s
         'I read a note at the fridge in the kitchen that said "ROOM 229".']         # 30-40 s
ON = QAConfig(top_k=8, quoted_text=True, use_embeddings=False)
FRIDGE = "What did the last note I read at the fridge in the kitchen say?"


@pytest.fixture
def store(tmp_path):
    s = ten_second_memories(tmp_path, TEXTS)
    yield s
    s.close()


@pytest.mark.parametrize("question, asked", [
    ("What did the note at the fridge in the kitchen say?", True),
    (FRIDGE, True),
    ("what did that sign read", True),
    ("What was written on the whiteboard?", True),
    ("What did I do after I read the note?", False),
    ("Where did I read the note?", False),
    ("What did I say to Anna?", False),
])
def test_which_questions_ask_for_words(question, asked):
    assert words_asked(question) is asked


def test_the_one_quoted_option_answers_cited_by_its_memory_without_the_model(store):
    backend = ScriptedBackend([])  # any model call would fail: the script is empty
    res = answer(store, backend, FRIDGE, ["WIFI TREE65", "ROOM 229", "ROOM 337", "CALL MIA 1PM"], asked_at=100.0,
                 cfg=ON)
    assert res["choice"] == "B" and res["reason"] == BY_QUOTE and not res["abstained"]
    assert [c["t_start"] for c in res["citations"]] == [30.0]
    assert not backend.calls


def test_no_quoted_option_is_not_in_memory_without_the_model(store):
    """The memories quote "ROOM 229"; "ROOM 2" and "ROOM 2290" are other words, however alike."""
    res = answer(store, ScriptedBackend([]), FRIDGE, ["ROOM 2", "ROOM 2290", "BUY RICE"], asked_at=100.0, cfg=ON)
    assert res["choice"] == "E" and res["abstained"] and res["reason"] == NOT_QUOTED and res["citations"] == []
    assert len(res["shown"]) >= 1  # the memories were found and read; none quotes an option


def test_several_quoted_options_or_off_leave_the_choice_to_the_model(store):
    reply = json.dumps({"answer": "A", "citations": []})
    backend = ScriptedBackend([reply] * 2)
    several = answer(store, backend, FRIDGE, ["BUY MILK", "ROOM 229", "PIN 4821"], asked_at=100.0, cfg=ON)
    off = answer(store, backend, FRIDGE, ["ROOM 2", "BUY RICE"], asked_at=100.0,
                 cfg=QAConfig(top_k=8, use_embeddings=False))
    assert several["choice"] == off["choice"] == "A" and several["reason"] is None and len(backend.calls) == 2


def test_a_quote_is_whole_words_in_order_ignoring_case_and_punctuation():
    mems = [{"id": 1, "t_end": 10.0, "text": 'It said "meeting 4:30" and "pin 12".'},
            {"id": 2, "t_end": 20.0, "text": 'A note: "MEETING 4:30".'}]
    found = quoted_options(["MEETING 4:30", "PIN 1", "pin 12", "4:30 MEETING", " ... "], mems)
    assert {i: m["id"] for i, m in found.items()} == {0: 2, 2: 1}  # the latest memory quoting it


def test_an_open_answer_of_words_stands_only_when_a_shown_memory_quotes_them(store):
    quoted = answer(store, ScriptedBackend([json.dumps({"answer": "ROOM 229", "citations": []})]), FRIDGE, None,
                    asked_at=100.0, cfg=ON)
    assert quoted["text"] == "ROOM 229" and not quoted["abstained"]
    guessed = answer(store, ScriptedBackend([json.dumps({"answer": "WIFI TREE65", "citations": []})]), FRIDGE, None,
                     asked_at=100.0, cfg=ON)
    assert guessed["abstained"] and guessed["text"] == "not in memory" and guessed["reason"] == NOT_QUOTED
    off = answer(store, ScriptedBackend([json.dumps({"answer": "WIFI TREE65", "citations": []})]), FRIDGE, None,
                 asked_at=100.0, cfg=QAConfig(top_k=8, use_embeddings=False))
    assert off["text"] == "WIFI TREE65" and not off["abstained"]
