"""qa/where.py: the thing a "where did I leave it?" question asks after; qa.where_answered: such a question, shown
the latest memories naming the thing, is answered, never "not in memory"."""

import json

import pytest

from edge_agent.config import QAConfig
from edge_agent.qa.answer import BY_PLACE, WHERE_SAID, answer
from edge_agent.qa.where import left_thing, option_placed, place_after, sentence_naming
from edge_agent.vlm.fake import ScriptedBackend
from test_qa_answer import word_logprobs
from test_qa_retrieve import ten_second_memories

TEXTS = ["I put the yellow bowl on the shelf in the living room.",                               # 0-10 s
         "I was cooking at the counter in the kitchen.",                                         # 10-20 s
         "I put the yellow bowl on the table in the kitchen. I met <face_1> in the kitchen.",    # 20-30 s
         "I was washing dishes at the sink in the kitchen."]                                     # 30-40 s
BOWL = "Where did I leave the yellow bowl?"
SCORE = QAConfig(top_k=8, latest_k=1, use_embeddings=False, choice="score")
ON = QAConfig(top_k=8, latest_k=1, use_embeddings=False, choice="score", where_answered=True)
# P("not in memory") = exp(-0.3) = 0.74, above the 0.5 threshold; of the options "on the table" scores best
UNSURE = word_logprobs("not in memory table")


def test_the_thing_a_question_asks_where_it_was_left():
    assert left_thing("Where did I leave the blue keys?") == "blue keys"
    assert left_thing("where did i put my phone") == "phone"
    assert left_thing("Where did I last see my red cup?") == "red cup"
    assert left_thing("Where are my KEYS?") == "keys"


def test_a_place_or_time_after_the_thing_is_not_part_of_it():
    assert left_thing("Where did I leave my keys in the kitchen?") == "keys"
    assert left_thing("Where did I put the red cup this morning?") == "red cup"
    assert left_thing("where did i last see my phone yesterday") == "phone"
    assert left_thing("Where did I leave the bottle of water at lunch?") == "bottle of water"
    assert left_thing("Where did I leave the cup I used?") == "cup"
    assert left_thing("Where did I put the letter from the bank that I opened") == "letter"


def test_other_questions_ask_after_no_thing():
    for q in ("Where is the kitchen?", "What did I leave on the desk?", "Where did I leave?",
              "Where did I meet <face_1>?", "Who did I meet in the office?", ""):
        assert left_thing(q) is None, q


def test_the_sentence_that_names_the_thing():
    assert sentence_naming(TEXTS[2], "yellow bowl") == "I put the yellow bowl on the table in the kitchen."
    assert sentence_naming("I met <face_1>. I put the Yellow  Bowl down! Then I left.", "yellow bowl") == \
        "I put the Yellow  Bowl down!"
    assert sentence_naming(" I put the bowls away. ", "bowl") == "I put the bowls away."  # none names it: all of it


@pytest.fixture
def store(tmp_path):
    s = ten_second_memories(tmp_path, TEXTS)
    yield s
    s.close()


def test_where_answered_takes_the_likeliest_option_where_the_model_would_abstain(store):
    opts = ["on the shelf in the living room", "on the table"]
    off = answer(store, ScriptedBackend([], logprobs=UNSURE), BOWL, opts, asked_at=100.0, cfg=SCORE)
    assert off["choice"] == "E" and off["abstained"] and len(off["shown"]) == 1  # the latest memory naming the bowl
    cite = json.dumps({"answer": "on the table", "citations": off["shown"]})
    on = answer(store, ScriptedBackend([cite], logprobs=UNSURE), BOWL, opts, asked_at=100.0, cfg=ON)
    assert on["choice"] == "B" and not on["abstained"] and [c["t_start"] for c in on["citations"]] == [20.0]


def test_an_open_where_question_the_model_abstains_on_gets_the_sentence_naming_the_thing(store):
    abstain = json.dumps({"answer": "not in memory", "citations": []})
    off = answer(store, ScriptedBackend([abstain]), BOWL, None, asked_at=100.0, cfg=SCORE)
    assert off["abstained"] and off["text"] == "not in memory"
    on = answer(store, ScriptedBackend([abstain]), BOWL, None, asked_at=100.0, cfg=ON)
    assert not on["abstained"] and on["reason"] == WHERE_SAID and on["choice"] is None
    assert on["text"] == "I put the yellow bowl on the table in the kitchen."
    assert [c["t_start"] for c in on["citations"]] == [20.0]
    # the model's own answer stands where it gives one
    said = json.dumps({"answer": "on the kitchen table", "citations": on["shown"]})
    res = answer(store, ScriptedBackend([said]), BOWL, None, asked_at=100.0, cfg=ON)
    assert res["text"] == "on the kitchen table" and res["reason"] is None


def test_where_answered_leaves_other_questions_and_things_no_memory_names_to_the_model(store):
    for question in ("What colour was the bowl?", "Where did I leave the red cup?"):  # no where route found
        res = answer(store, ScriptedBackend([], logprobs=UNSURE), question, ["red", "on the table"], asked_at=100.0,
                     cfg=ON)
        assert res["choice"] == "E" and res["abstained"], question


def test_the_place_a_sentence_gives_after_the_thing():
    put = "I put the red keys on the bookshelf in the office."
    assert place_after(put, "red keys") == "on the bookshelf in the office"
    took = "I took the green keys from the sofa in the living room to the desk in the office."
    assert place_after(took, "green keys") == "the desk in the office"  # where it went, not where it came from
    assert place_after("I picked up the red bowl from the shelf.", "red bowl") == "the shelf"
    assert place_after("I saw the red cup.", "red cup") is None and place_after("I met <face_1>.", "red cup") is None


def test_where_from_memory_answers_an_open_where_question_with_the_place_without_the_model(store):
    cfg = QAConfig(top_k=8, latest_k=1, use_embeddings=False, where_from_memory=True)
    on = answer(store, ScriptedBackend([]), BOWL, None, asked_at=100.0, cfg=cfg)  # no model call
    assert on["text"] == "on the table in the kitchen" and on["reason"] == BY_PLACE
    assert [c["t_start"] for c in on["citations"]] == [20.0]
    # multiple choice: the one option the place names, no model call
    mc = answer(store, ScriptedBackend([]), BOWL, ["on the shelf in the living room", "on the table in the kitchen"],
                asked_at=100.0, cfg=cfg)
    assert mc["choice"] == "B" and mc["reason"] == BY_PLACE and [c["t_start"] for c in mc["citations"]] == [20.0]
    # an option the place does not name, or two it names: the model (scripted) decides
    reply = json.dumps({"answer": "A", "citations": []})
    for opts in (["on the shelf", "on the sofa"], ["on the table", "in the kitchen"]):
        res = answer(store, ScriptedBackend([reply]), BOWL, opts, asked_at=100.0, cfg=cfg)
        assert res["choice"] == "A" and res["reason"] != BY_PLACE, opts


def test_the_option_a_place_names():
    opts = ["on the dresser in the bedroom", "on the desk in the office", "on the sofa in the living room"]
    assert option_placed("the desk in the office", opts) == 1
    assert option_placed("on the sofa in the living room", opts) == 2
    assert option_placed("the desk", opts) is None  # no option's every word
    assert option_placed("the desk in the office", ["on the desk in the office", "at the desk"]) is None  # two
