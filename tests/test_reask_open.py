"""tools/reask_open.py: open questions re-asked over a run's store at the moment they were asked, graded without a
judge (a count by its number, anything else by the option the answer is most like)."""

import json

from conftest import load_tool
from edge_agent.config import QAConfig
from edge_agent.vlm.fake import ScriptedBackend
from test_qa_retrieve import ten_second_memories

tool = load_tool("reask_open")


def test_a_count_is_graded_by_its_number_and_anything_else_by_the_option_it_is_most_like():
    count = {"category": "counting", "open_answer": "2", "options": ["1", "2", "3", "4"], "answer": "B"}
    assert tool.graded(count, {"abstained": False, "text": "twice"}) == (True, True)
    assert tool.graded(count, {"abstained": False, "text": "3 times"}) == (True, False)
    assert tool.graded(count, {"abstained": False, "text": "I cannot say"}) == (False, False)
    where = {"category": "object_location", "open_answer": "in the sink in the kitchen", "answer": "B",
             "options": ["on the dresser in the bedroom", "in the sink in the kitchen", "on the counter in the kitchen",
                         "on the sofa in the living room"]}
    assert tool.graded(where, {"abstained": False, "text": "I left it in the sink."}) == (True, True)
    assert tool.graded(where, {"abstained": False, "text": "in the kitchen"}) == (True, False)  # two options tie
    assert tool.graded(where, {"abstained": False, "text": "on the sofa"}) == (True, False)
    assert tool.graded(where, {"abstained": True, "text": "not in memory"}) == (False, False)
    doing = {"category": "activity_at_time", "open_answer": "putting the blue phone on the sofa", "answer": "A",
             "options": ["putting the blue phone on the sofa", "picking up the orange phone from the shelf",
                         "washing dishes at the sink", "reading a note at the fridge"]}
    assert tool.graded(doing, {"abstained": False, "text": "putting the blue phone down"}) == (True, True)
    # most like the right option, but the orange phone is only a wrong option's
    wrong = {"abstained": False, "text": "picking up the orange phone from the sofa"}
    assert tool.graded(doing, wrong) == (True, False)


def test_each_question_is_asked_open_over_the_memories_written_by_then(tmp_path):
    store = ten_second_memories(tmp_path, ["I picked up the red cup from the desk.", "I walked into the kitchen.",
                                           "I picked up the red cup from the table."])
    opts = ["1", "2", "3", "4"]
    for at in (15.0, 35.0):  # asked after the first memory, then after all three
        qid = store.add_question("How many times did I pick up the red cup?", opts, at)
        store.add_answer(qid, choice="A", text="1", abstained=False, cited=[], model="m", adapter_id=None,
                         reason=None, shown=[])
    store.close()
    clip = {"questions": [{"question": "How many times did I pick up the red cup?", "options": opts, "asked_at": at,
                           "answer": "AB"[i], "open_answer": str(i + 1), "category": "counting"}
                          for i, at in enumerate((15.0, 35.0))]}
    rows = tool.reask_store(tmp_path / "t.db", clip, ScriptedBackend([]), None,
                            QAConfig(use_embeddings=False, count_by_memories=True))
    assert [(r["said"], r["right"]) for r in rows] == [("1 time", True), ("2 times", True)]
    summary = tool.totals(rows)
    assert summary["all"]["right"] == 2 and summary["by_category"]["counting"]["prec"] == 1.0
    assert [r["held"] for r in rows] == [False, False]  # "2 times" is no memory's words: counted, not read
    assert tool.held_by("the red cup", [{"text": "I picked up the red cup."}])
    assert not tool.held_by("the purple bowl", [{"text": "I picked up the red cup."}, {"text": "A purple book."}])
    # the run's own store is untouched: the two questions it asked, no more
    import sqlite3
    with sqlite3.connect(tmp_path / "t.db") as db:
        assert db.execute("SELECT COUNT(*) FROM questions").fetchone()[0] == 2
