"""Phase One rewards on hand-made cases: each component alone, the richness normalisation, the length corners."""

from __future__ import annotations

import json

import pytest

from edge_agent.train import rewards as R
from edge_agent.train.config import RewardsSection
from edge_agent.train.judges import GroundTruthJudge, Verdict


def words(text: str) -> int:
    return len(text.split())


def mem(text: str) -> str:
    return json.dumps({"description": text})


# --- format ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply,status,value", [
    (mem("I put the red cup on the shelf in the kitchen."), "ok", 0.0),
    ('{"description": "I met <face_3> in the office."}', "ok", 0.0),
    ("I put the red cup on the shelf.", "parse_failure", -1.5),  # not JSON
    ('{"description": "unterminated', "parse_failure", -1.5),
    ('{"text": "I put the cup down."}', "parse_failure", -1.5),  # wrong key
    ('{"description": "a", "extra": 1}', "parse_failure", -1.5),
    ('{"description": ""}', "parse_failure", -1.5),
    ('["I put the cup down."]', "parse_failure", -1.5),
    (mem("I met face_3 in the office."), "violation", -0.5),  # person not as <face_N>
    (mem("One. Two. Three."), "violation", -0.5),  # more than two sentences
    (mem(" ".join(["word"] * 20) + "."), "violation", -0.5),  # over the token cap below
])
def test_format_reward(reply, status, value):
    parsed = R.parse_memory(reply, words, max_tokens=12)
    assert parsed.status == status
    assert R.format_reward(parsed) == value


def test_format_reward_constants_are_configurable():
    bad = R.parse_memory("nope", words, 10)
    assert R.format_reward(bad, parse_failure=-2.0) == -2.0
    rule = R.parse_memory(mem("face_1 waved."), words, 10)
    assert R.format_reward(rule, violation=-0.25) == -0.25


def test_completion_text_accepts_trl_shapes():
    assert R.completion_text("abc") == "abc"
    assert R.completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
    assert R.completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                                 {"type": "text", "text": "b"}]}]) == "ab"


# --- correctness, rules ----------------------------------------------------------------------------------------

def test_correctness_reward():
    assert R.correctness_reward(True) == 0.5
    assert R.correctness_reward(False) == -0.5
    assert R.correctness_reward(None) == 0.0


def test_rules_reward_counts_each_broken_rule():
    assert R.rules_reward(False, False) == 0.0
    assert R.rules_reward(True, False) == -0.5
    assert R.rules_reward(False, True) == -0.5
    assert R.rules_reward(True, True) == -1.0


# --- length ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,expected", [(0, 0.0), (10, 0.0), (11, -0.1), (15, -0.5), (19, -0.9), (20, -1.0),
                                        (21, -1.0), (1000, -1.0)])
def test_length_penalty_corners(n, expected):
    assert R.length_penalty(n, 10) == pytest.approx(expected)


def test_length_penalty_rejects_bad_limit():
    with pytest.raises(ValueError, match="limit=0"):
        R.length_penalty(5, 0)


# --- richness --------------------------------------------------------------------------------------------------

def test_rank_score():
    assert [R.rank_score(p, 5) for p in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert R.rank_score(0, 1) == 1.0
    with pytest.raises(ValueError):
        R.rank_score(3, 3)


def test_min_max_normalisation():
    assert R.min_max([2.0, 4.0, 3.0]) == [0.0, 1.0, 0.5]
    assert R.min_max([None, 1.0, 3.0]) == [0.0, 0.0, 1.0]
    assert R.min_max([0.7, 0.7]) == [0.0, 0.0]  # no preference to express
    assert R.min_max([None, None]) == [0.0, 0.0]


def test_richness_averages_per_trajectory_then_normalises_and_scales():
    # 4 correct descriptions ranked in the group: trajectory 0 wrote positions 0 and 3 (mean (1 + 0)/2 = 0.5),
    # trajectory 1 position 1 (2/3), trajectory 2 position 2 (1/3), trajectory 3 nothing correct.
    out = R.richness_rewards([[0, 3], [1], [2], []], n=4)
    # raw 0.5, 0.667, 0.333 -> min-max 0.5, 1, 0 -> x 0.1; no correct description -> 0
    assert out == pytest.approx([0.05, 0.1, 0.0, 0.0])
    assert R.richness_rewards([[0], [1]], n=2, scale=1.0) == [1.0, 0.0]
    assert R.richness_rewards([[0], []], n=1) == [0.0, 0.0]  # a single correct one has nothing to beat


def test_combine_weights():
    comps = {"format": -1.5, "correctness": 0.5, "length": -0.5}
    assert R.combine(comps, {"format": 2.0, "correctness": 1.0, "length": 0.0}) == -2.5
    assert R.combine(comps, {}) == -1.5


# --- the reward set (what TRL calls) ---------------------------------------------------------------------------

class ScriptedJudge:
    """Correct iff the description mentions "cup"; redundant iff it mentions "again"; ranks longer first."""

    def __init__(self):
        self.calls = []

    def assess(self, window, descriptions):
        self.calls.append(("assess", window["window_id"], list(descriptions)))
        return [Verdict("cup" in d, "again" in d, "subtitle" in d) for d in descriptions]

    def rank(self, window, descriptions):
        self.calls.append(("rank", window["window_id"], list(descriptions)))
        return sorted(range(len(descriptions)), key=lambda i: -len(descriptions[i]))


def test_reward_set_components_and_total():
    judge = ScriptedJudge()
    rs = R.RewardSet(judge, RewardsSection(length_limit=6, max_memory_tokens=12), words)
    completions = [[{"role": "assistant", "content": c}] for c in (
        mem("I put the red cup on the big shelf."),  # correct, 9 words
        mem("A cup."),  # correct, short
        "garbage",  # parse failure
        mem("I saw a dog again."),  # wrong and redundant
    )]
    cols = {"window_id": ["w1"] * 4, "prior_memories": [["x"]] * 4}
    comps = rs.components(completions, cols)
    assert comps["format"] == [0.0, 0.0, -1.5, 0.0]
    assert comps["correctness"] == [0.5, 0.5, 0.0, -0.5]
    assert comps["rules"] == [0.0, 0.0, 0.0, -0.5]
    assert comps["length"] == pytest.approx([-0.5, 0.0, 0.0, 0.0])  # (9 - 6) / 6
    assert comps["richness"] == pytest.approx([0.1, 0.0, 0.0, 0.0])
    assert [f.__name__ for f in rs.funcs] == list(R.COMPONENTS)
    # one judge call per window and kind, however many components ask
    for f in rs.funcs:
        f(prompts=None, completions=completions, **cols)
    assert [c[0] for c in judge.calls] == ["assess", "rank"]
    total = rs.total(completions, cols)
    assert total == pytest.approx([0.5 - 0.5 + 0.1, 0.5, -1.5, -1.0])


def test_reward_set_groups_by_window():
    judge = ScriptedJudge()
    rs = R.RewardSet(judge, RewardsSection(), words)
    completions = [mem("the cup"), mem("the big cup"), mem("a cup"), mem("a large cup")]
    comps = rs.components(completions, {"window_id": ["a", "a", "b", "b"]})
    assert comps["richness"] == pytest.approx([0.0, 0.1, 0.0, 0.1])
    assert {c[1] for c in judge.calls} == {"a", "b"}


def test_reward_set_with_ground_truth_judge():
    window = {"caption": "I picked up the red cup from the shelf in the kitchen.",
              "events": json.dumps([{"t": 1.0, "t_end": 1.0, "type": "pick_up", "room": "kitchen",
                                     "thing": "red cup", "from": "shelf",
                                     "description": "I picked up the red cup from the shelf in the kitchen."}])}
    rs = R.RewardSet(GroundTruthJudge(), RewardsSection(), words)
    cols = {k: [v] * 3 for k, v in window.items()}
    cols["window_id"] = ["w"] * 3
    comps = rs.components([mem("I picked up the red cup in the kitchen."), mem("I picked up the blue book."),
                           mem("I took the red cup.")], cols)
    assert comps["correctness"] == [0.5, -0.5, 0.5]
    assert comps["richness"] == pytest.approx([0.1, 0.0, 0.0])  # red cup + kitchen beats red cup alone
