"""Preference pairs in the store: which windows to compare, the seeded train/held-out split, and training inputs.

Owns: grouping candidates by window, skipping candidate pairs already stored, assigning each new window group
to `train` or `holdout` (seeded; a group already split keeps its split forever, so a window never lands on
both sides across runs), writing pairs with their feedback ids, and turning stored pairs into
`PreferencePair`s (prompt messages via a prompt function, completions as the writer emits them).

Split unit: the writer's windows overlap (the window of segment s holds the frames of segments
s-k+1..s, k = `window_segments`), so two windows share frames exactly when their segments are fewer than k
apart in one stream. The unit is a connected group of such windows (segments with pairs, chained at
distance < k), never a fixed block: blocks leak at their edges (the window of segment 5 shares frames with
segments 1-4). Long chains are cut, leaving out the windows at the cut (`split_groups`). A new window that would join groups already on both sides would leak whatever side it took;
its pairs are not stored (`store_pairs` returns them in `dropped`).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

from edge_agent.adapt.dpo import PreferencePair, completion_text
from edge_agent.adapt.reward import JudgedPair, RelevanceReward
from edge_agent.types import Message

PromptFn = Callable[[Any, int], "list[Message] | None"]


def window_group(candidate_or_pair: dict[str, Any], window_segments: int) -> tuple[int, int]:
    """(stream id, segment index) of a candidate's or pair's window: the key `split_groups` chains."""
    return int(candidate_or_pair["stream_id"]), int(candidate_or_pair["idx"])


GROUP_SPAN_WINDOWS = 2  # a chain of frame-sharing windows is cut after this many window lengths


def split_groups(windows: Iterable[tuple[int, int]], window_segments: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Window (stream, idx) -> its group key (stream, first idx of the group).

    Windows of one stream fewer than `window_segments` (k) apart share frames and are chained into one group.
    A chain is cut once it spans GROUP_SPAN_WINDOWS * k segments: the windows that would still share frames
    with it are left out (not in the result: their pairs are not stored), and the next window at least k past
    its last one starts a new group. Without the cut, a day whose candidate windows lie close together would
    be one group, all train or all held out.
    """
    k = max(1, int(window_segments))
    span = GROUP_SPAN_WINDOWS * k
    out: dict[tuple[int, int], tuple[int, int]] = {}
    by_stream: dict[int, list[int]] = defaultdict(list)
    for stream, idx in set(windows):
        by_stream[stream].append(idx)
    for stream, idxs in by_stream.items():
        start = last = None
        closed = False
        for idx in sorted(idxs):
            if last is not None and idx - last < k:  # shares frames with the current group's last window
                if closed:
                    continue
                if idx - start >= span:
                    closed = True  # left out; the group ends at `last`
                    continue
                out[(stream, idx)] = (stream, start)
                last = idx
                continue
            start = last = idx
            closed = False
            out[(stream, idx)] = (stream, start)
    return out


def candidate_groups(store: Any, segment_ids: Iterable[int] | None = None) -> dict[int, list[dict[str, Any]]]:
    """Candidates by segment, only segments with at least two candidates."""
    by_seg: dict[int, list[dict[str, Any]]] = defaultdict(list)
    wanted = None if segment_ids is None else {int(s) for s in segment_ids}
    for c in store.candidates():
        if wanted is None or c["segment_id"] in wanted:
            by_seg[c["segment_id"]].append(c)
    return {s: cs for s, cs in by_seg.items() if len(cs) >= 2}


def _existing(store: Any) -> tuple[set[frozenset[int]], dict[int, str]]:
    """Candidate-id pairs already stored (either orientation) and the split of each segment that has pairs."""
    seen, split = set(), {}
    for p in store.pairs():
        seen.add(frozenset((p["chosen_candidate_id"], p["rejected_candidate_id"])))
        split[p["segment_id"]] = p["split"]
    return seen, split


def judge_new_pairs(store: Any, reward: RelevanceReward,
                    segment_ids: Iterable[int] | None = None,
                    progress: Callable[[str, dict[str, Any]], None] | None = None) -> list[JudgedPair]:
    """Run the reward over candidate pairs that are not stored yet (either orientation)."""
    seen, _ = _existing(store)
    groups = candidate_groups(store, segment_ids)
    out: list[JudgedPair] = []
    for i, (seg, cands) in enumerate(sorted(groups.items())):
        out += reward.judge_segment(cands, skip=seen)
        if progress:
            progress("reward", {"done": i + 1, "total": len(groups), "pairs": len(out)})
    return out


def assign_splits(groups: Sequence[tuple[int, int]], fixed: dict[tuple[int, int], str], holdout_share: float,
                  seed: int, live: set[tuple[int, int]] | None = None) -> dict[tuple[int, int], str]:
    """Split for each window group. Groups in `fixed` (all groups split in earlier runs) keep theirs. New
    groups are shuffled (seeded) and the first ones go to holdout until holdout holds ceil(share * all
    groups), so runs that each bring one new window still fill both sides in proportion; with two or more
    groups in all, each side gets at least one. `live` (default: all of `fixed`) are the fixed groups that
    still count toward the proportion."""
    out = {g: fixed[g] for g in groups if g in fixed}
    new = sorted(g for g in set(groups) if g not in fixed)
    random.Random(seed).shuffle(new)
    counted = {g: v for g, v in fixed.items() if live is None or g in live}
    hold_now = sum(v == "holdout" for v in counted.values())
    train_now = len(counted) - hold_now
    total = len(counted) + len(new)
    n_hold = min(max(math.ceil(holdout_share * total) - hold_now, 0), len(new))
    if total >= 2 and new:
        if hold_now + n_hold == 0:
            n_hold = 1
        if train_now + len(new) - n_hold == 0:
            n_hold -= 1
    for i, g in enumerate(new):
        out[g] = "holdout" if i < n_hold else "train"
    return out


def store_pairs(store: Any, judged: Sequence[JudgedPair], *, holdout_share: float, seed: int,
                window_segments: int = 5, dropped: list[JudgedPair] | None = None) -> list[int]:
    """Write judged pairs with their split (by group of frame-sharing windows); returns the new pair ids.
    Pairs whose window would join groups already on both sides are left out (appended to `dropped`)."""
    if not judged:
        return []
    seen, seg_split = _existing(store)
    cands = {c["id"]: c for c in store.candidates()}
    seg_window = {c["segment_id"]: window_group(c, window_segments) for c in cands.values()}
    fixed_windows = {seg_window[s]: sp for s, sp in seg_split.items() if s in seg_window}
    new_windows = [window_group(cands[j.chosen_id], window_segments) for j in judged]
    group_of = split_groups(list(fixed_windows) + new_windows, window_segments)
    sides: dict[tuple[int, int], set[str]] = defaultdict(set)
    for w, sp in fixed_windows.items():
        if w in group_of:
            sides[group_of[w]].add(sp)
    fixed = {g: next(iter(sp)) for g, sp in sides.items() if len(sp) == 1}
    # Groups whose frames are gone (used by an earlier run, or expired) keep their side but can no longer be
    # trained or gated on: only live groups count toward the balance, so each run's new windows fill both.
    live_segs = {seg for seg in seg_split if store.kept_frames(seg)}
    live = {group_of[seg_window[seg]] for seg in live_segs if seg in seg_window and seg_window[seg] in group_of}
    open_groups = [group_of[w] for w in new_windows if w in group_of and len(sides.get(group_of[w], ())) < 2]
    splits = assign_splits(open_groups, fixed, holdout_share, seed, live=live)
    ids = []
    for j, w in zip(judged, new_windows):
        key = frozenset((j.chosen_id, j.rejected_id))
        if key in seen:
            continue
        g = group_of.get(w)
        if g is None or len(sides.get(g, ())) >= 2:  # cut out of a long chain, or joins both sides: would leak
            if dropped is not None:
                dropped.append(j)
            continue
        seen.add(key)
        ids.append(store.add_pair(j.chosen_id, j.rejected_id, j.feedback_ids, j.score, splits[g]))
    return ids


def preference_pairs(store: Any, split: str, prompt_fn: PromptFn,
                     rows: Sequence[dict[str, Any]] | None = None) -> tuple[list[PreferencePair], list[int]]:
    """Stored pairs of `split` as training inputs; pairs whose prompt cannot be rebuilt (frames expired or
    deleted: prompt_fn returns None) are skipped and their ids returned second."""
    rows = store.pairs(split=split) if rows is None else rows
    prompts: dict[int, list[Message] | None] = {}
    out, skipped = [], []
    for r in rows:
        seg = int(r["segment_id"])
        if seg not in prompts:
            prompts[seg] = prompt_fn(store, seg)
        msgs = prompts[seg]
        if msgs is None:
            skipped.append(int(r["id"]))
            continue
        out.append(PreferencePair(msgs, completion_text(r["chosen_text"]), completion_text(r["rejected_text"]),
                                  int(r["id"])))
    return out, skipped


def holdout_segment_ids(store: Any) -> list[int]:
    """Segments (windows) of the held-out pairs: where a compliance function should run the writer."""
    return sorted({int(r["segment_id"]) for r in store.pairs(split="holdout")})
