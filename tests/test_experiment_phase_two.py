"""tools/experiment_phase_two.py's grading: eval memories against the clip's true captions (right object, another
one, one where there is none), read from the stores `eval` leaves and the clip's events.json."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("experiment_phase_two")


def _store(path, memories: dict[int, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE segments (id INTEGER PRIMARY KEY, idx INTEGER)")
        conn.execute("CREATE TABLE memories (id INTEGER PRIMARY KEY, segment_id INTEGER, text TEXT)")
        for i, (idx, text) in enumerate(memories.items()):
            conn.execute("INSERT INTO segments VALUES (?, ?)", (i + 1, idx))
            conn.execute("INSERT INTO memories VALUES (?, ?, ?)", (i + 1, i + 1, text))


def test_things_reads_colour_and_kind_together(tool):
    assert tool.things("I put the Red keys on the shelf. I picked up the blue cup.") == {("red", "keys"), ("blue", "cup")}
    assert tool.things("I walked into the red kitchen with the keys.") == set()


def test_object_grades_count_right_wrong_and_invented_objects_per_config(tool, tmp_path):
    captions = ["I put the red keys on the shelf in the kitchen.", "I picked up the blue cup from the desk.",
                "I walked into the office.", "I put the green bowl on the bed."]
    clip = tmp_path / "eval_clips" / "seed7200-4min-15qpm"
    clip.mkdir(parents=True)
    (clip / "events.json").write_text(json.dumps({"segments": [{"index": i, "caption": c}
                                                               for i, c in enumerate(captions)]}))
    (clip / "questions.json").write_text(json.dumps({"segment_seconds": 10.0, "questions": []}))
    run = tmp_path / "wearer_A" / "eval" / "runs" / "r1"
    _store(run / "baseline" / "s.db", {0: "I put the red keys on the shelf.", 1: "I picked up the red cup.",
                                       2: "I walked into the office.", 3: "I was in the bedroom."})
    _store(run / tool.folder("A@10fb") / "s.db", {0: "I put the red keys on the shelf.", 1: "I took the blue cup.",
                                                  2: "I put the orange phone on the desk.", 3: "I put the green bowl down."})
    rows = [{"config": "baseline", "seed": 7200, "run_dir": str(run)}, {"config": "A@10fb", "seed": 7200,
                                                                         "run_dir": str(run)}]
    # [segments with an object, memory names it, names only another, no-object segments naming one, segments]
    assert tool.object_grades(tmp_path, rows) == {"baseline": [3, 1, 1, 0, 4], "A@10fb": [3, 3, 0, 1, 4]}


def test_answerable_needs_every_content_word_of_the_true_answer(tool):
    where = {"category": "object_location", "question": "Where did I leave the red keys?",
             "open_answer": "on the dresser in the bedroom"}
    assert tool.answerable(where, "I put the red keys on the dresser in the bedroom.")
    assert not tool.answerable(where, "I put the blue keys on the dresser in the bedroom.")  # another object
    assert not tool.answerable(where, "I put the red keys on the bed in the bedroom.")  # another place
    who = {"category": "person", "question": "Who did I meet in the office?", "open_answer": "<face_4>"}
    assert tool.answerable(who, "I met <face_4> in the office.") and not tool.answerable(who, "I met <face_1>.")
    assert tool.answerable({"category": "counting", "question": "How many?", "open_answer": "2"}, "2") is None
    doing = {"category": "activity_at_time", "question": "What was I doing at 1:19 into the recording?",
             "open_answer": "picking up the purple cup from the shelf"}
    assert tool.answerable(doing, "I picked up the purple cup from the shelf in the living room.")
    assert not tool.answerable(doing, "I picked up the purple bowl from the shelf.")


def test_memory_cause_separates_what_a_vector_can_change_from_what_it_cannot(tool):
    q = {"category": "object_location", "question": "Where did I leave the red keys?",
         "open_answer": "on the dresser in the bedroom"}
    truth = "I put the red keys on the dresser in the bedroom. I picked up the green cup from the bed."
    assert tool.memory_cause(q, "I put the red keys on the dresser in the bedroom.", truth) == "holds"
    assert tool.memory_cause(q, "I put the red keys on the bed.", truth) == "partly"
    assert tool.memory_cause(q, "I picked up the green cup from the bed.", truth) == "left out"
    assert tool.memory_cause(q, "I picked up the blue phone.", truth) == "misseen"
    assert tool.memory_cause(q, "I walked into the bedroom.", truth) == "none"
    who = {"category": "person", "question": "Who did I meet in the office?", "open_answer": "<face_4>"}
    truth = "I met <face_4> in the office. I was talking with <face_1>."
    assert tool.memory_cause(who, "I met <face_4>.", truth) == "holds"
    assert tool.memory_cause(who, "I was talking with <face_1>.", truth) == "left out"
    assert tool.memory_cause(who, "I met <face_2>.", truth) == "misseen"
    assert tool.memory_cause(who, "I walked into the office.", truth) == "none"
    assert tool.memory_cause({"category": "text", "question": "?", "open_answer": "BUY MILK"}, "", "") is None


def test_phase_two_pairs_tells_a_swapped_name_from_a_different_kind_of_fact():
    """tools/phase_two_pairs.py: a pair whose memories swap one face for another names the same kinds of fact and
    differs in under 4 words; one that trades a person for an object differs in kind."""
    mod = load_tool("phase_two_pairs")
    from edge_agent.adapt.dpo import PreferencePair

    swap = PreferencePair([], '{"description": "I met <face_3> in the living room."}',
                          '{"description": "I met <face_2> in the living room."}', 1)
    trade = PreferencePair([], '{"description": "I put the red keys on the shelf in the kitchen."}',
                           '{"description": "I met <face_2> in the kitchen."}', 2)
    assert mod.kinds(swap.chosen) == mod.kinds(swap.rejected) == {"person", "room"}
    assert mod.kinds(trade.chosen) == {"object", "colour", "room"}
    info = mod.describe([swap, trade], {1: {"score": 0.01}, 2: {"score": 0.09}})
    assert info["same_kinds"] == 1 and info["differ_in_under_4_words"] == 1
    assert info["chosen_minus_rejected_naming"] == {"object": 1, "colour": 1, "person": -1}
    assert info["gap_median"] == pytest.approx(0.05)


def test_graded_questions_join_each_answer_to_its_truth_and_its_evidence_memories(tool, tmp_path):
    clip = tmp_path / "eval_clips" / "seed7201-4min-15qpm"
    clip.mkdir(parents=True)
    (clip / "events.json").write_text(json.dumps({"segments": [
        {"index": 0, "caption": "I walked into the kitchen."},
        {"index": 1, "caption": "I put the red keys on the shelf in the kitchen."}]}))
    where = {"id": "q1", "category": "object_location", "question": "Where did I leave the red keys?",
             "options": ["on the shelf in the kitchen", "on the bed in the bedroom"], "answer": "A",
             "open_answer": "on the shelf in the kitchen", "evidence": [12.0, 14.5], "asked_at": 20.0}
    (clip / "questions.json").write_text(json.dumps({"segment_seconds": 10.0, "questions": [where]}))
    run = tmp_path / "runs" / "r1"
    db = run / "baseline" / "s.db"
    _store(db, {0: "I walked into the kitchen.", 1: "I put the red keys on the shelf in the kitchen."})
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE questions (id INTEGER PRIMARY KEY, text TEXT, options TEXT, asked_at REAL)")
        conn.execute("CREATE TABLE answers (id INTEGER PRIMARY KEY, question_id INTEGER, choice TEXT)")
        conn.execute("INSERT INTO questions VALUES (1, ?, ?, ?)",
                     (where["question"], json.dumps(where["options"]), 1796461220.0))
        conn.execute("INSERT INTO answers VALUES (1, 1, 'B')")
    graded = tool.graded_questions(tmp_path, [{"config": "baseline", "seed": 7201, "run_dir": str(run)}])
    assert graded == [{"config": "baseline", "seed": 7201, "id": "q1", "category": "object_location", "right": False,
                       "answerable": True, "cause": "holds"}]  # the memory held it; the reader still chose wrong
