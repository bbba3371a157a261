"""tools/grade_pairs.py: Phase Two's kept pairs graded against the synthetic clip's truth, on a replayed copy."""

from __future__ import annotations

import json

import pytest

from adapt_support import ask, seed_windows
from conftest import load_tool

from edge_agent.store import Store


@pytest.fixture(scope="module")
def tool():
    return load_tool("grade_pairs")


def test_truth_and_use_grades(tool):
    caption = "I put the red cup on the shelf in the kitchen."
    assert tool.truth_grade("I put the red cup on the shelf.", "I put the blue cup on the desk.", caption) == "toward"
    assert tool.truth_grade("I was walking.", "I put the red cup on the shelf.", caption) == "away"
    assert tool.truth_grade("I saw a cup.", "I saw the cup.", caption) == "same"
    q = {"category": "object_location", "question": "Where did I leave the red cup?", "open_answer": "on the shelf"}
    assert tool.use_grade("I put the red cup on the shelf.", "I put the red cup.", [q]) == "useful"
    assert tool.use_grade("I put the red cup.", "I put the red cup on the shelf.", [q]) == "useless"
    assert tool.use_grade("I was walking.", "I was reading.", [q]) is None


def test_a_home_replayed_by_rule_grades_the_pairs_and_leaves_the_home_alone(tool, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    store = Store.open(home / "memory.db")
    seed_windows(store, tmp_path / "frames", ["red cup"], frames=False)  # "... on the shelf." vs "I saw the red cup."
    ask(store, "Where did I leave the red cup?", False, corrected="on the shelf")
    store.close()
    before = (home / "memory.db").read_bytes()
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "events.json").write_text(json.dumps({"segment_seconds": 10.0, "segments": [
        {"index": 0, "caption": "I saw the red cup on the shelf."}]}))
    (clip / "questions.json").write_text(json.dumps({"questions": [
        {"category": "object_location", "question": "Where did I leave the red cup?", "open_answer": "on the shelf",
         "evidence": [2.0, 5.0]}]}))
    out = tool.grade(tmp_path, ["embedding", "embedding:off"], None)
    assert out["embedding"]["grades"] == {"answer toward": 1, "answer useful": 1}
    assert out["embedding"]["stats"]["answer_decided"] == 1
    assert out["embedding:off"]["grades"] == {"embedding toward": 1, "embedding useful": 1}
    assert (home / "memory.db").read_bytes() == before
