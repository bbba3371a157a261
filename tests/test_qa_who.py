"""qa/who.py: the place a "who did I meet there?" question names; qa.who_named: such a question is answered by the
one option the latest memory naming a person there names."""

import json

import pytest

from edge_agent.config import QAConfig
from edge_agent.qa.answer import BY_NAME, answer
from edge_agent.qa.who import met_place, named_option
from edge_agent.vlm.fake import ScriptedBackend
from test_qa_answer import word_logprobs
from test_qa_retrieve import ten_second_memories


def test_the_place_a_who_did_i_meet_question_names():
    assert met_place("Who did I meet in the kitchen?") == "kitchen"
    assert met_place("Who did I meet most recently in the living room?") == "living room"
    assert met_place("who did i talk to in the office today?") == "office"
    assert met_place("Who did I last talk with in my bedroom?") == "bedroom"
    assert met_place("Who did I see at the door") == "door"


def test_other_questions_name_no_meeting_place():
    for q in ("Who did I meet?", "Where did I meet <face_1>?", "How many times did I meet <face_2>?",
              "Where did I leave my keys in the kitchen?", "What did I see in the kitchen?",
              "Who was in the kitchen?", ""):
        assert met_place(q) is None, q


KITCHEN = ["I met <face_2> in the kitchen.",                                        # 0-10 s
           "I was cooking at the counter in the kitchen.",                          # 10-20 s
           "I met <face_1> in the kitchen. I put the red cup on the table.",        # 20-30 s
           "I was reading in the office with <face_3>.",                            # 30-40 s
           "I was washing dishes at the sink in the kitchen."]                      # 40-50 s
WHO = "Who did I meet most recently in the kitchen?"
FACES = ["<face_2>", "<face_1>", "<face_3>"]


def memory(t: float, text: str, mid: int = 1) -> dict:
    return {"id": mid, "t_start": t, "t_end": t + 10.0, "text": text}


def test_the_option_the_latest_memory_names_whole():
    older, latest = memory(0.0, "I met <face_2> in the kitchen.", 1), memory(20.0, "I met <face_1> there.", 2)
    assert named_option(FACES, [older, latest]) == (1, latest)
    assert named_option(["<face_1>", "<face_12>"], [memory(0.0, "I met <face_12>.")])[0] == 1  # not a prefix
    assert named_option(["Ann", "Anna"], [memory(0.0, "I talked with anna.")])[0] == 1  # whole, any case
    # the latest naming any option decides: several named -> None (the model tells), none named -> None
    assert named_option(FACES, [older, memory(20.0, "I met <face_1> and <face_3>.", 2)]) is None
    assert named_option(FACES, [memory(0.0, "I was cooking.")]) is None


@pytest.fixture
def store(tmp_path):
    s = ten_second_memories(tmp_path, KITCHEN)
    yield s
    s.close()


def test_who_named_answers_with_the_person_the_latest_memory_there_names_not_the_model(store):
    # the model, scripted to favour the wrong person, decides when the setting is off
    cite = json.dumps({"answer": "<face_2>", "citations": []})
    off = answer(store, ScriptedBackend([cite], logprobs=word_logprobs("<face_2>")), WHO, FACES, asked_at=100.0,
                 cfg=QAConfig(top_k=8, latest_k=1, use_embeddings=False, choice="score"))
    assert off["choice"] == "A" and off["reason"] is None
    # on, no model call at all (no reply scripted): <face_1>, from the memory at 20 s, the latest naming a person there
    on = answer(store, ScriptedBackend([]), WHO, FACES, asked_at=100.0,
                cfg=QAConfig(top_k=8, latest_k=1, use_embeddings=False, choice="score", who_named=True))
    assert on["choice"] == "B" and on["reason"] == BY_NAME and not on["abstained"]
    assert [c["t_start"] for c in on["citations"]] == [20.0]
