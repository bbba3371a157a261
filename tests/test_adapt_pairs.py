"""Pairs in the store: split by window group (seeded, stable across runs), no re-judging, prompts and frames."""

from __future__ import annotations

import numpy as np
import pytest

from adapt_support import BagOfWords, OBJECTS, ask, prefer, seed_windows

from edge_agent.memory.keep import kept_window_messages
from edge_agent.adapt.pairs import (
    assign_splits, holdout_segment_ids, judge_new_pairs, preference_pairs, store_pairs)
from edge_agent.adapt.reward import RelevanceReward, RewardConfig, task_distribution
from edge_agent.store import Store
from edge_agent.types import ImagePart, Segment
from edge_agent.vlm.fake import ScriptedBackend


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "memory.db")
    yield s
    s.close()


def test_assign_splits_seeded_and_both_sides():
    groups = [(1, g) for g in range(8)]
    a = assign_splits(groups, {}, 0.25, seed=0)
    assert a == assign_splits(list(reversed(groups)), {}, 0.25, seed=0)  # order of arrival does not matter
    assert sum(v == "holdout" for v in a.values()) == 2
    assert a != assign_splits(groups, {}, 0.25, seed=1)
    two = assign_splits([(1, 0), (1, 1)], {}, 0.01, seed=0)
    assert sorted(two.values()) == ["holdout", "train"]
    fixed = assign_splits(groups, {(1, 0): "holdout", (1, 1): "holdout"}, 0.25, seed=0)
    assert fixed[(1, 0)] == fixed[(1, 1)] == "holdout"
    assert sum(v == "holdout" for k, v in fixed.items() if k[1] >= 2) == 0  # 2 of 8 are held out already
    # one new window per run still fills both sides in proportion
    split: dict = {}
    for g in range(8):
        split.update(assign_splits([(1, g)], split, 0.25, seed=g))
    assert sorted(split.values()).count("holdout") == 2


def _reward(store, judge):
    cfg = RewardConfig(answer_match=False)  # the judge decides (the wearer's answers would, before it)
    return RelevanceReward(task_distribution(store, cfg), BagOfWords(), cfg, judge)


def test_store_pairs_split_by_window_group_and_not_rejudged(store, tmp_path):
    # 9 segments at indices 0..8: with windows of 5 segments each window shares frames with its neighbours,
    # so all 9 form one chain, which lies on one side (fixed blocks 0-4 / 5-9 would leak at 4|5)
    wins = seed_windows(store, tmp_path / "frames", OBJECTS[:9], idx_step=1, frames=False)
    fid = ask(store, "Where is my stuff?", False, corrected="on the shelf")
    judge = ScriptedBackend(prefer("shelf"))
    judged = judge_new_pairs(store, _reward(store, judge))
    assert len(judged) == 9 and len(judge.calls) == 18
    ids = store_pairs(store, judged, holdout_share=0.25, seed=0, window_segments=5)
    rows = store.pairs()
    assert [r["id"] for r in rows] == ids
    split_of = {r["segment_id"]: r["split"] for r in rows}
    assert len(set(split_of.values())) == 1  # one group, never mixed
    assert all(r["feedback_ids"] == [fid] for r in rows)
    assert all(r["chosen_candidate_id"] == w[1] for r, w in zip(rows, wins))

    # a second run compares nothing again and adds nothing
    judge2 = ScriptedBackend(prefer("shelf"))
    assert judge_new_pairs(store, _reward(store, judge2)) == [] and judge2.calls == []
    assert store_pairs(store, judged, holdout_share=0.25, seed=0) == []

    # windows added later next to an already split group (indices 9, 10): 9 joins it and gets its split; 10 would
    # stretch the chain past 2 window lengths (0..10), so it is cut off and its pairs are not stored
    sid = store.get_segment(wins[5][0])["stream_id"]
    seg_id, _ = store.commit_segment(sid, Segment(10, 100.0, 110.0), memory="x", failure=None, writer_model="t",
                                     adapter_id=None, n_tokens=1, latency_s=0.0)
    late = store.commit_segment(sid, Segment(9, 90.0, 100.0), memory="x", failure=None, writer_model="t",
                                adapter_id=None, n_tokens=1, latency_s=0.0)[0]
    for seg in (seg_id, late):
        for text in ('{"description": "I saw the lamp on the shelf."}', '{"description": "I saw the lamp."}'):
            store.add_candidate(seg, text, valid=True, failure=None, sampling={}, source="sample")
    new_ids = store_pairs(store, judge_new_pairs(store, _reward(store, ScriptedBackend(prefer("shelf")))),
                          holdout_share=0.25, seed=0, window_segments=5)
    assert len(new_ids) == 1
    new_rows = {r["segment_id"]: r["split"] for r in store.pairs(ids=new_ids)}
    assert new_rows == {late: split_of[wins[5][0]]}


def test_delete_feedback_removes_derived_pairs(store, tmp_path):
    seed_windows(store, tmp_path / "frames", OBJECTS[:4], frames=False)
    fid = ask(store, "Where did I put it?", False, corrected="on the shelf")
    store_pairs(store, judge_new_pairs(store, _reward(store, ScriptedBackend(prefer("shelf"))))
                , holdout_share=0.25, seed=0)
    assert len(store.pairs()) == 4
    assert store.delete_feedback([fid])["pairs"] == 4
    assert store.pairs() == []


def new_segment_only(store, segment_id):
    """The writer's prompt with a window of one segment: the new frames only."""
    return kept_window_messages(store, segment_id, 1)


def test_preference_pairs_need_frames(store, tmp_path):
    wins = seed_windows(store, tmp_path / "frames", OBJECTS[:4])
    ask(store, "Where?", False, corrected="on the shelf")
    store_pairs(store, judge_new_pairs(store, _reward(store, ScriptedBackend(prefer("shelf")))),
                holdout_share=0.25, seed=0)
    train, skipped = preference_pairs(store, "train", new_segment_only)
    hold, _ = preference_pairs(store, "holdout", new_segment_only)
    assert len(train) == 3 and len(hold) == 1 and skipped == []
    assert holdout_segment_ids(store) == [r["segment_id"] for r in store.pairs(split="holdout")]
    p = train[0]
    assert p.chosen.startswith('{"description": ') and "shelf" in p.chosen and "shelf" not in p.rejected
    images = [x for x in p.messages[-1].parts if isinstance(x, ImagePart)]
    assert len(images) == 2 and images[0].pixels.shape == (64, 64, 3) and images[0].pixels.dtype == np.uint8
    store.delete_kept_frames(segment_ids=[wins[0][0], wins[1][0], wins[2][0], wins[3][0]])
    train, skipped = preference_pairs(store, "train", new_segment_only)
    assert train == [] and len(skipped) == 3


def test_groups_whose_frames_are_gone_do_not_hold_the_balance():
    """After `adapt` used (and deleted) the frames of the held-out windows, the next run's new windows must
    fill both sides again, or it has nothing to gate on (seen in tools/experiment_phase_two.py: 58 train + 0)."""
    from edge_agent.adapt.pairs import assign_splits

    old = {(1, i): ("holdout" if i < 2 else "train") for i in range(8)}
    new = [(2, i) for i in range(8)]
    stale = assign_splits(new, old, 0.25, seed=0)  # old groups still counted: the quota is already met
    assert sum(v == "holdout" for g, v in stale.items() if g in new) == 2
    dead = assign_splits(new, old, 0.25, seed=0, live={g for g, v in old.items() if v == "train"})
    assert sum(v == "holdout" for g, v in dead.items() if g in new) == 4  # ceil(0.25 * 14) - 0 live held out
    assert all(dead[g] == v for g, v in old.items() if g in dead)


def test_a_long_chain_of_windows_is_cut_so_both_sides_get_groups():
    """A day of candidate windows close together used to chain into one group (all held out, nothing to train);
    the chain is cut every 2 window lengths and the windows at the cut are left out, so no frame is shared."""
    from edge_agent.adapt.pairs import split_groups

    groups = split_groups([(1, i) for i in range(30)], 5)
    starts = sorted(set(groups.values()))
    assert len(starts) >= 2
    for (_, i), (_, g) in groups.items():
        for (_, j), (_, h) in groups.items():
            if g != h:
                assert abs(i - j) >= 5, (i, j)  # windows of different groups share no frame
