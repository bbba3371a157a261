"""Preference pairs in the store: which windows to compare, the seeded train/held-out split, and training inputs.

Owns: grouping candidates by window, skipping candidate pairs already stored, assigning each new window group
to `train` or `holdout` (seeded; a group already split keeps its split forever, so a window never lands on
both sides across runs), writing pairs with their feedback ids, and turning stored pairs into
`PreferencePair`s (prompt messages via a prompt function, completions as the writer emits them).

Split unit: the writer's windows overlap (window k = segments k-4..k share frames), so the unit is a block of
`window_segments` consecutive segments of one stream, not a single segment: two windows that share frames
are never on different sides.
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
    """(stream id, block of `window_segments` consecutive segment indices)."""
    return int(candidate_or_pair["stream_id"]), int(candidate_or_pair["idx"]) // max(1, window_segments)


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
                  seed: int) -> dict[tuple[int, int], str]:
    """Split for each window group. Groups in `fixed` (all groups split in earlier runs) keep theirs. New
    groups are shuffled (seeded) and the first ones go to holdout until holdout holds ceil(share * all
    groups), so runs that each bring one new window still fill both sides in proportion; with two or more
    groups in all, each side gets at least one."""
    out = {g: fixed[g] for g in groups if g in fixed}
    new = sorted(g for g in set(groups) if g not in fixed)
    random.Random(seed).shuffle(new)
    hold_now = sum(v == "holdout" for v in fixed.values())
    train_now = len(fixed) - hold_now
    total = len(fixed) + len(new)
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
                window_segments: int = 5) -> list[int]:
    """Write judged pairs with their split (by window group); returns the new pair ids."""
    if not judged:
        return []
    seen, seg_split = _existing(store)
    cands = {c["id"]: c for c in store.candidates()}
    seg_group = {c["segment_id"]: window_group(c, window_segments) for c in cands.values()}
    fixed = {seg_group[s]: sp for s, sp in seg_split.items() if s in seg_group}
    groups = [window_group(cands[j.chosen_id], window_segments) for j in judged]
    splits = assign_splits(groups, fixed, holdout_share, seed)
    ids = []
    for j, g in zip(judged, groups):
        key = frozenset((j.chosen_id, j.rejected_id))
        if key in seen:
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
