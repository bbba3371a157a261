"""Task-relevance reward: weights from feedback, both judge orderings, ties, format, embedding agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adapt_support import BagOfWords, ask, prefer, seed_windows

from edge_agent.adapt.reward import (
    JUDGE_SCHEMA, RelevanceReward, RewardConfig, answer_words, embed_texts, memory_text, task_distribution)
from edge_agent.errors import ConfigError
from edge_agent.store import Store
from edge_agent.vlm.fake import ScriptedBackend


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "memory.db")
    yield s
    s.close()


def test_task_distribution_weights(store):
    f_ok = ask(store, "Is the stove on?", True)
    f_wrong = ask(store, "Did I lock the door?", False)
    f_corr = ask(store, "Where did I put the red cup?", False, corrected="on the shelf")
    q = store.add_question("What did I eat?", [], asked_at=0.0)  # asked, answered, no feedback
    store.add_answer(q, choice=None, text="pasta", abstained=False, cited=[], model="tiny", adapter_id=None)
    task = task_distribution(store, RewardConfig())
    by_text = {t.text: t for t in task.questions}
    assert by_text["Is the stove on?"].weight == 1.0 and by_text["Is the stove on?"].feedback_ids == [f_ok]
    assert by_text["Did I lock the door?"].weight == 3.0 and by_text["Did I lock the door?"].feedback_ids == [f_wrong]
    corrected = by_text["Where did I put the red cup? Answer: on the shelf"]
    assert corrected.weight == 6.0 and corrected.feedback_ids == [f_corr]
    assert by_text["What did I eat?"].weight == 1.0 and by_text["What did I eat?"].feedback_ids == []
    assert task.top(1)[0] is corrected
    assert len(task_distribution(store, RewardConfig(max_questions=2)).questions) == 2


# The judge's tests set the wearer's answers aside (`answer_match=False`): "on the shelf" would decide these pairs
# before any judge is asked (tested below, "the wearer's corrected answers").
JUDGED = RewardConfig(answer_match=False)


def _setup(store, tmp_path, n=3):
    wins = seed_windows(store, tmp_path / "frames", ["red cup", "keys", "phone"][:n], frames=False)
    fid = ask(store, "Where did I put the red cup?", False, corrected="on the shelf")
    return wins, fid


def test_both_orderings_agree_pair_kept_with_feedback(store, tmp_path):
    wins, fid = _setup(store, tmp_path)
    seg, shelf, plain = wins[0]
    judge = ScriptedBackend(prefer("shelf"))
    reward = RelevanceReward(task_distribution(store, JUDGED), BagOfWords(), JUDGED, judge)
    pairs = reward.judge_segment(store.candidates(segment_id=seg))
    assert len(pairs) == 1
    p = pairs[0]
    assert (p.chosen_id, p.rejected_id, p.segment_id) == (shelf, plain, seg)
    assert p.feedback_ids == [fid] and p.score > 0 and p.reason == "judge_and_embedding"
    assert len(judge.calls) == 2  # asked in both orderings
    a0, _ = (c.messages[-1].parts[0] for c in judge.calls)
    assert "Memory A: I saw the red cup on the shelf." in judge.calls[0].messages[-1].parts[0]
    assert "Memory A: I saw the red cup." in judge.calls[1].messages[-1].parts[0]
    assert all(c.json_schema == JUDGE_SCHEMA and c.sampling.temperature == 0 for c in judge.calls)
    assert "Where did I put the red cup? Answer: on the shelf" in a0
    assert reward.stats.kept == 1


def test_position_bias_and_ties_are_dropped(store, tmp_path):
    seg = _setup(store, tmp_path)[0][0][0]
    cands = store.candidates(segment_id=seg)
    task = task_distribution(store, RewardConfig())
    always_a = RelevanceReward(task, BagOfWords(), JUDGED, ScriptedBackend(lambda c: '{"better": "A"}'))
    assert always_a.judge_segment(cands) == [] and always_a.stats.judge_disagreed == 1
    tie = RelevanceReward(task, BagOfWords(), JUDGED, ScriptedBackend(lambda c: '{"better": "tie"}'))
    assert tie.judge_segment(cands) == [] and tie.stats.judge_ties == 1
    broken = RelevanceReward(task, BagOfWords(), JUDGED, ScriptedBackend(lambda c: "A"))
    assert broken.judge_segment(cands) == [] and broken.stats.judge_invalid == 1


def test_judge_must_agree_with_embedding(store, tmp_path):
    (seg, shelf, plain) = _setup(store, tmp_path)[0][0]
    cands = store.candidates(segment_id=seg)
    task = task_distribution(store, RewardConfig())
    contrary = ScriptedBackend(prefer("shelf", against=True))  # consistent in both orders, but against relevance
    r = RelevanceReward(task, BagOfWords(), JUDGED, contrary)
    assert r.judge_segment(cands) == [] and r.stats.embedding_disagreed == 1
    judge_only = RelevanceReward(task, BagOfWords(), RewardConfig(rule="judge", answer_match=False), ScriptedBackend(
        prefer("shelf", against=True)))
    (p,) = judge_only.judge_segment(cands)
    assert (p.chosen_id, p.rejected_id) == (plain, shelf) and p.score < 0 and p.feedback_ids == []
    emb = RelevanceReward(task, BagOfWords(), RewardConfig(rule="embedding", answer_match=False))
    (p,) = emb.judge_segment(cands)
    assert (p.chosen_id, p.rejected_id) == (shelf, plain)
    assert emb.judge is None
    high_gap = RelevanceReward(task, BagOfWords(), RewardConfig(rule="embedding", min_relevance_gap=0.9,
                                                                    answer_match=False))
    assert high_gap.judge_segment(cands) == [] and high_gap.stats.below_gap == 1


def test_malformed_candidates_always_lose(store, tmp_path):
    (seg, shelf, plain) = _setup(store, tmp_path)[0][0]
    bad = store.add_candidate(seg, '{"description": "one. two. three."}', valid=False,
                              failure="description has 3 sentences (at most 2)", sampling={}, source="sample")
    bad2 = store.add_candidate(seg, "not json at all shelf shelf", valid=False, failure="not JSON", sampling={},
                               source="sample")
    judge = ScriptedBackend(prefer("shelf"))
    r = RelevanceReward(task_distribution(store, JUDGED), BagOfWords(), JUDGED, judge)
    pairs = r.judge_segment(store.candidates(segment_id=seg))
    fmt = {(p.chosen_id, p.rejected_id) for p in pairs if p.reason == "format"}
    assert fmt == {(shelf, bad), (shelf, bad2), (plain, bad), (plain, bad2)}
    assert all(p.feedback_ids == [] and p.score == 1.0 for p in pairs if p.reason == "format")
    assert r.stats.both_malformed == 1 and r.stats.format_pairs == 4
    assert len(judge.calls) == 2  # only the valid-valid pair went to the judge


def test_no_questions_only_format_pairs(store, tmp_path):
    (seg, shelf, plain), *_ = seed_windows(store, tmp_path / "f", ["keys"], frames=False)
    judge = ScriptedBackend(prefer("shelf"))
    r = RelevanceReward(task_distribution(store, RewardConfig()), BagOfWords(), RewardConfig(), judge)
    assert r.judge_segment(store.candidates(segment_id=seg)) == [] and judge.calls == []


def test_helpers_and_config():
    assert memory_text('{"description": "a cup."}') == "a cup."
    assert memory_text("plain") == "plain"

    class EncodeOnly:  # qa.embed.MiniLM exposes encode(), not embed()
        def encode(self, texts):
            return np.ones((len(texts), 3)) * 2

    m = embed_texts(EncodeOnly(), ["a", "b"])
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0)
    with pytest.raises(ConfigError, match="reward.rule='vote'"):
        RewardConfig(rule="vote")
    with pytest.raises(ConfigError, match="reward.wrong_weight=0"):
        RewardConfig(wrong_weight=0)
    with pytest.raises(ConfigError, match="needs a judge"):
        RelevanceReward(task_distribution_stub(), BagOfWords(), RewardConfig(), None)
    json.dumps(JUDGE_SCHEMA)


def task_distribution_stub():
    from edge_agent.adapt.reward import TaskDistribution

    return TaskDistribution([])


# --- rule "auto": the judge is used only while it is position-consistent ------------------------------------

OBJECTS = ["red cup", "keys", "phone", "book", "bowl", "bottle", "green cup", "blue keys", "pen", "mug"]


def _pairs_by(store, tmp_path, judge, cfg):
    from edge_agent.adapt.pairs import judge_new_pairs

    wins = seed_windows(store, tmp_path / "frames", OBJECTS, frames=False)
    ask(store, "Where did I put the red cup?", False, corrected="on the shelf")
    ask(store, "What was on the shelf?", False)
    reward = RelevanceReward(task_distribution(store, cfg), BagOfWords(), cfg, judge)
    return wins, reward, judge_new_pairs(store, reward)


def test_auto_drops_a_judge_that_always_says_A_and_keeps_pairs_by_embedding(store, tmp_path):
    cfg = RewardConfig(rule="auto", judge_probe=4, min_judge_consistency=0.5, answer_match=False)
    judge = ScriptedBackend(lambda c: '{"better": "A"}')
    wins, reward, pairs = _pairs_by(store, tmp_path, judge, cfg)
    assert reward.stats.judge_fallback == 1 and reward.stats.judge_disagreed == 4
    assert len(judge.calls) == 8  # the probe only: 4 comparisons in both orderings, then no more judge calls
    # every window still gives its pair, the place-naming memory chosen (the embedding's verdict)
    assert sorted((p.chosen_id, p.rejected_id) for p in pairs) == sorted((s, p) for _, s, p in wins)
    assert {p.reason for p in pairs} == {"embedding"} and reward.stats.kept == len(OBJECTS)


def test_auto_keeps_a_consistent_judge(store, tmp_path):
    cfg = RewardConfig(rule="auto", judge_probe=4, min_judge_consistency=0.5, answer_match=False)
    judge = ScriptedBackend(prefer("shelf"))
    _, reward, pairs = _pairs_by(store, tmp_path, judge, cfg)
    assert reward.stats.judge_fallback == 0 and reward.stats.judge_consistent == len(OBJECTS)
    assert len(judge.calls) == 2 * len(OBJECTS) and len(pairs) == len(OBJECTS)
    assert {p.reason for p in pairs} == {"judge_and_embedding"}


def test_judge_and_embedding_never_falls_back(store, tmp_path):
    cfg = RewardConfig(rule="judge_and_embedding", judge_probe=1, answer_match=False)
    _, reward, pairs = _pairs_by(store, tmp_path, ScriptedBackend(lambda c: '{"better": "A"}'), cfg)
    assert pairs == [] and reward.stats.judge_fallback == 0 and reward.stats.judge_disagreed == len(OBJECTS)


# --- the wearer's corrected answers (`answer_match`) decide before any model -----------------------------------

def test_answer_words_keep_the_facts_and_drop_the_function_words():
    assert answer_words("on the red shelf") == {"red", "shelf"}
    assert answer_words("<face_2>") == {"<face_2>"} and answer_words("WIFI TREE68") == {"wifi", "tree68"}
    assert answer_words("in the") == set()


def test_a_corrected_answer_decides_the_pair_before_a_biased_judge(store, tmp_path):
    ((seg, shelf, plain), *_), fid = _setup(store, tmp_path)
    judge = ScriptedBackend(lambda c: '{"better": "A"}')  # position-biased: alone it would keep nothing
    r = RelevanceReward(task_distribution(store, RewardConfig()), BagOfWords(), RewardConfig(), judge)
    (p,) = r.judge_segment(store.candidates(segment_id=seg))
    assert (p.chosen_id, p.rejected_id, p.reason, p.feedback_ids) == (shelf, plain, "answer", [fid])
    assert judge.calls == [] and r.stats.answer_decided == 1 and r.stats.kept == 1
    off = RelevanceReward(task_distribution(store, JUDGED), BagOfWords(), JUDGED, judge)
    assert off.judge_segment(store.candidates(segment_id=seg)) == [] and len(judge.calls) == 2


def test_answers_are_weighed_and_only_the_winners_feedback_is_kept(store, tmp_path):
    (seg, *_), *_ = seed_windows(store, tmp_path / "f", ["keys"], frames=False)
    red = store.add_candidate(seg, json.dumps({"description": "I put the red keys on the desk."}), valid=True,
                              failure=None, sampling={}, source="sample")
    desk = store.add_candidate(seg, json.dumps({"description": "I put the keys on the desk by <face_2>."}),
                               valid=True, failure=None, sampling={}, source="sample")
    f_desk = ask(store, "Where did I put the keys?", False, corrected="on the desk")  # both memories tell it
    f_red = ask(store, "What colour were the keys?", False, corrected="red")
    f_face = ask(store, "Who was there?", False, corrected="<face_2>")
    judge = ScriptedBackend(prefer("zzz"))  # never picks: a tie whenever it is asked
    cfg = RewardConfig(max_pairs_per_segment=20)
    r = RelevanceReward(task_distribution(store, cfg), BagOfWords(), cfg, judge)
    pairs = {(p.chosen_id, p.rejected_id): p for p in r.judge_segment(store.candidates(segment_id=seg))}
    # red vs desk: each tells one answer of equal weight besides the shared "desk": a tie, so the judge is asked
    assert (red, desk) not in pairs and (desk, red) not in pairs and r.stats.judge_ties >= 1
    # against the seeded memories ("I saw the keys (on the shelf).") both tell more; the ids are those they add
    told_by_red = [p for (c, _), p in pairs.items() if c == red]
    assert told_by_red and all(p.reason == "answer" and set(p.feedback_ids) <= {f_desk, f_red} for p in told_by_red)
    assert all(f_face not in p.feedback_ids for p in told_by_red)
    assert any(p.feedback_ids == sorted([f_desk, f_face]) for (c, _), p in pairs.items() if c == desk)
