"""qa/count.py: the event a "how many ...?" question counts; qa.count_by_memories: such a question is answered by the
number of memories telling that event: multiple choice when that number is an option, an open question by the number."""

import json

import pytest

from edge_agent.config import QAConfig
from edge_agent.qa.answer import BY_COUNT, answer
from edge_agent.qa.count import counted_event, counted_option, counted_text, past, singular
from edge_agent.vlm.fake import ScriptedBackend
from test_qa_retrieve import ten_second_memories


def test_past_tenses_and_singulars_a_memory_uses():
    assert [past(v) for v in ("pick", "walk", "meet", "read", "move", "carry", "play")] == \
        ["picked", "walked", "met", "read", "moved", "carried", "played"]
    assert [singular(n) for n in ("notes", "boxes", "cherries", "cups", "glass")] == \
        ["note", "box", "cherry", "cup", "glass"]


@pytest.mark.parametrize("question, told, not_told", [
    ("How many times did I pick up the red cup?", "I picked up the red cup from the desk", "I picked up the red cups"),
    ("How many times did I pick up the red cup?", "Then I picked up a red cup.", "I put the red cup down"),
    ("How many times did I meet <face_1>?", "I met <face_1> in the kitchen", "I met <face_12> in the kitchen"),
    ("how many times did i walk into the kitchen", "I walked into the kitchen.", "I walked into the kitchenette"),
    ("How many notes did I read?", 'I read a note at the fridge that said "CALL ANN".', "I read a book"),
])
def test_the_event_a_how_many_question_counts_is_found_whole_in_a_sentence(question, told, not_told):
    pattern, words = counted_event(question)
    assert pattern.search(told) and not pattern.search(not_told)
    assert words and all(w in told.lower() for w in words.split())


def test_other_questions_count_nothing():
    for q in ("Where did I leave the red cup?", "Which of these did I do first?", "How many people did I meet?",
              "How much did I pay?", "What was I doing at 0:20 into the recording?", ""):
        assert counted_event(q) is None, q


def test_the_option_is_the_number_of_sentences_telling_the_event():
    one, two = {"told": 1}, {"told": 2}
    assert counted_option(["4", "3", "1", "2"], [one, two]) == 1
    assert counted_option(["once", "twice", "three times"], [one, one]) == 1
    assert counted_option(["3 times", "2 times"], [one, two]) == 0
    assert counted_option(["4", "5"], [one]) is None  # the count is no option: the model answers
    assert counted_option(["0", "1"], []) is None  # nothing told: the model answers


def test_the_open_answer_is_the_number_in_the_question_s_terms():
    one, two = {"told": 1}, {"told": 2}
    assert counted_text("How many times did I pick up the red cup?", [one, two]) == "3 times"
    assert counted_text("How many times did I walk into the kitchen?", [one]) == "1 time"
    assert counted_text("How many notes did I read?", [two]) == "2 notes"
    assert counted_text("How many notes did I read?", [one]) == "1 note"
    assert counted_text("How many notes did I read?", []) is None  # nothing told: the model answers


KITCHEN = ["I picked up the red cup from the desk. I walked into the kitchen.",   # 0-10 s
           "I put the red cup on the table in the kitchen.",                      # 10-20 s
           "I was cooking at the counter in the kitchen.",                        # 20-30 s
           "I picked up the red cup from the table. I met <face_1>.",             # 30-40 s
           "I picked up the blue cup from the shelf.",                            # 40-50 s
           "I picked up the red cup again from the sink."]                        # 50-60 s
PICKS = "How many times did I pick up the red cup?"


@pytest.fixture
def store(tmp_path):
    s = ten_second_memories(tmp_path, KITCHEN)
    yield s
    s.close()


def test_count_by_memories_answers_with_the_number_of_memories_telling_it_not_the_model(store):
    opts = ["1", "2", "3", "4"]
    # on, no model call at all (nothing scripted): the picks at 0, 30 and 50 s, not the blue cup's or the putting
    on = answer(store, ScriptedBackend([]), PICKS, opts, asked_at=100.0,
                cfg=QAConfig(use_embeddings=False, count_by_memories=True))
    assert on["choice"] == "C" and on["reason"] == BY_COUNT and not on["abstained"]
    assert [c["t_start"] for c in on["citations"]] == [0.0, 30.0, 50.0]
    # only what was remembered by the time asked (`until`): two picks by 45 s
    early = answer(store, ScriptedBackend([]), PICKS, opts, until=45.0, asked_at=100.0,
                   cfg=QAConfig(use_embeddings=False, count_by_memories=True))
    assert early["choice"] == "B"
    # off, the model decides (scripted to say 1)
    off = answer(store, ScriptedBackend([json.dumps({"answer": "A", "citations": []})]), PICKS, opts,
                 asked_at=100.0, cfg=QAConfig(use_embeddings=False))
    assert off["choice"] == "A" and off["reason"] != BY_COUNT


def test_count_by_memories_leaves_a_count_no_option_gives_to_the_model(store):
    reply = json.dumps({"answer": "D", "citations": []})
    got = answer(store, ScriptedBackend([reply]), PICKS, ["5", "6", "7", "8"], asked_at=100.0,
                 cfg=QAConfig(use_embeddings=False, count_by_memories=True))
    assert got["choice"] == "D" and got["reason"] != BY_COUNT


def test_an_open_counting_question_is_answered_with_the_number_citing_every_memory_telling_it(store):
    cfg = QAConfig(use_embeddings=False, count_by_memories=True)
    on = answer(store, ScriptedBackend([]), PICKS, None, asked_at=100.0, cfg=cfg)  # no model call
    assert on["choice"] is None and on["text"] == "3 times" and on["reason"] == BY_COUNT and not on["abstained"]
    assert [c["t_start"] for c in on["citations"]] == [0.0, 30.0, 50.0]
    # nothing tells the event: the model answers (scripted), as it does with the setting off
    reply = json.dumps({"answer": "not in memory", "citations": []})
    none = answer(store, ScriptedBackend([reply]), "How many times did I pick up the green bowl?", None,
                  asked_at=100.0, cfg=cfg)
    assert none["abstained"] and none["reason"] != BY_COUNT
    off = answer(store, ScriptedBackend([json.dumps({"answer": "once", "citations": []})]), PICKS, None,
                 asked_at=100.0, cfg=QAConfig(use_embeddings=False))
    assert off["text"] == "once" and off["reason"] != BY_COUNT


def test_walking_into_a_room_is_also_counted_by_the_rooms_the_memories_name(tmp_path):
    """The writer often writes a segment in the kitchen without "I walked into the kitchen": the rooms named, in
    order, tell the entries the sentences miss; the room the recording began in was not walked into."""
    s = ten_second_memories(tmp_path, [
        "I was cooking at the counter in the kitchen.",                 # 0-10 s: began here, no entry
        "I walked into the office.",                                    # 10-20 s
        "I put the cup on the desk in the office.",                     # 20-30 s
        "I put the bowl on the table in the kitchen.",                  # 30-40 s: an entry no sentence tells
        "I was washing dishes at the sink in the kitchen.",             # 40-50 s
        "I walked into the office. I walked into the kitchen."])        # 50-60 s: two entries
    cfg = QAConfig(use_embeddings=False, count_by_memories=True)
    kitchen = answer(s, ScriptedBackend([]), "How many times did I walk into the kitchen?", None, asked_at=100.0,
                     cfg=cfg)
    assert kitchen["text"] == "2 times" and [c["t_start"] for c in kitchen["citations"]] == [30.0, 50.0]
    office = answer(s, ScriptedBackend([]), "How many times did I walk into the office?", ["1", "2", "3"],
                    asked_at=100.0, cfg=cfg)
    assert office["choice"] == "B"  # the sentences and the rooms agree
    s.close()
