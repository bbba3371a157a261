"""The paper's Phase One rewards, each a separate pure function, and the TRL reward functions built from them.

Per rollout (one completion = one memory for the window's new segment):

- format:      0 for valid JSON {"description": ...} that keeps the content rules; `parse_failure` (-1.5) when
               the reply is not that JSON object; `format_violation` (-0.5) when it is but breaks a rule
               (<face_N> form, at most two sentences, token cap) -- the runtime's validate_memory decides;
- correctness: +0.5 if the judge finds the description correct, -0.5 if wrong, 0 when there is nothing to judge;
- rules:       `rule_penalty` (-0.5) for each broken rule the judge reports: repeating a fact already in the
               window's prior memories; describing subtitles or boxes drawn on the video;
- length:      0 up to L tokens, then linear to -1 at 2L, -1 beyond;
- richness:    the judge ranks the correct descriptions of a rollout group (best first); a description at
               position pos of n scores 1 - pos/(n-1) (1 when n = 1); a trajectory's score is the mean over its
               descriptions; the scores are min-max normalised over the group's trajectories that have any
               correct description, then multiplied by 0.1. Trajectories with none get 0.

The total is the weighted sum (TRL `reward_weights`), so each component is also logged on its own.
No torch here: the functions are tested on hand-made cases.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from edge_agent.memory.validate import validate_memory

COMPONENTS = ("format", "correctness", "rules", "length", "richness")


# --- parsing ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParsedMemory:
    """A rollout's reply: `status` is "ok", "parse_failure" (not the JSON object) or "violation" (a content rule)."""

    status: str
    description: str | None  # the text inside "description" when the JSON parsed (also for violations)
    n_tokens: int
    why: str | None = None


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as [{"role": "assistant", "content": ...}]; plain ones as strings."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "")
        if isinstance(content, list):
            return "".join(p.get("text", "") or "" for p in content if isinstance(p, dict))
        return str(content)
    return str(completion or "")


def parse_memory(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> ParsedMemory:
    """Classify one reply with the runtime's rules (edge_agent.memory.validate)."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return ParsedMemory("parse_failure", None, 0, "not JSON")
    if not isinstance(obj, dict) or set(obj) != {"description"} or not isinstance(obj["description"], str) \
            or not obj["description"].strip():
        return ParsedMemory("parse_failure", None, 0, 'not exactly {"description": "<text>"}')
    description = " ".join(obj["description"].split())
    v = validate_memory(text, count_tokens, max_tokens)
    if not v.ok:
        return ParsedMemory("violation", description, count_tokens(description), v.failure)
    return ParsedMemory("ok", v.description, v.n_tokens)


# --- the components --------------------------------------------------------------------------------------------

def format_reward(parsed: ParsedMemory, parse_failure: float = -1.5, violation: float = -0.5) -> float:
    if parsed.status == "parse_failure":
        return parse_failure
    if parsed.status == "violation":
        return violation
    return 0.0


def correctness_reward(correct: bool | None, correct_value: float = 0.5, wrong_value: float = -0.5) -> float:
    """correct None: nothing was judged (the reply did not parse); the format reward already penalised it."""
    if correct is None:
        return 0.0
    return correct_value if correct else wrong_value


def rules_reward(redundant: bool, overlay: bool, penalty: float = -0.5) -> float:
    """One penalty per broken rule: repeating a prior memory's fact; describing subtitles or boxes."""
    return penalty * (int(bool(redundant)) + int(bool(overlay)))


def length_penalty(n_tokens: int, limit: int) -> float:
    """0 up to `limit` tokens, linear to -1 at 2 x limit, -1 beyond."""
    if limit <= 0:
        raise ValueError(f"length limit={limit!r}: must be > 0")
    if n_tokens <= limit:
        return 0.0
    return -min(1.0, (n_tokens - limit) / limit)


def rank_score(pos: int, n: int) -> float:
    """1 - pos/(n-1) for position pos (0 = best) among n ranked descriptions; 1 when n = 1."""
    if not 0 <= pos < n:
        raise ValueError(f"position {pos} outside a ranking of {n}")
    return 1.0 if n == 1 else 1.0 - pos / (n - 1)


def min_max(values: Sequence[float | None]) -> list[float]:
    """Min-max normalise the non-None values to [0, 1]; None -> 0; all equal -> 0 (no preference to express)."""
    present = [v for v in values if v is not None]
    if not present:
        return [0.0 for _ in values]
    lo, hi = min(present), max(present)
    if hi - lo <= 1e-12:
        return [0.0 for _ in values]
    return [0.0 if v is None else (v - lo) / (hi - lo) for v in values]


def richness_rewards(positions: Sequence[Sequence[int]], n: int, scale: float = 0.1) -> list[float]:
    """positions[i]: the ranking positions of trajectory i's correct descriptions among the group's n.

    Each trajectory's raw score is the mean rank_score of its descriptions (None when it has none); the raw
    scores are min-max normalised over the group and multiplied by `scale`.
    """
    raw: list[float | None] = []
    for pos in positions:
        raw.append(sum(rank_score(p, n) for p in pos) / len(pos) if pos else None)
    return [scale * v for v in min_max(raw)]


def combine(components: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted sum of reward components (missing weights count 1)."""
    return float(sum(weights.get(name, 1.0) * value for name, value in components.items()))


# --- the TRL reward functions ----------------------------------------------------------------------------------

class RewardSet:
    """The five components as TRL reward functions sharing one judge, with per-batch memoisation.

    `funcs` go to GRPOTrainer(reward_funcs=...), `weights` to GRPOConfig(reward_weights=...). Each function
    receives the batch's completions plus the dataset columns (window_id, prior_memories, events, caption...).
    """

    def __init__(self, judge, rcfg, count_tokens: Callable[[str], int]):
        self.judge = judge
        self.cfg = rcfg
        self.count_tokens = count_tokens
        self._memo: OrderedDict[tuple, Any] = OrderedDict()
        self.funcs = [self._named(name) for name in COMPONENTS]
        self.weights = [float(getattr(rcfg, f"{name}_weight")) for name in COMPONENTS]

    def _named(self, name: str):
        def reward(prompts=None, completions=None, **kwargs):
            return self.components(completions, kwargs)[name]
        reward.__name__ = name  # TRL logs rewards/<name>/mean
        return reward

    def components(self, completions: Sequence[Any], columns: Mapping[str, Any]) -> dict[str, list[float]]:
        texts = [completion_text(c) for c in completions]
        ids = list(columns.get("window_id") or [str(i) for i in range(len(texts))])
        key = (tuple(texts), tuple(ids))
        if key in self._memo:
            return self._memo[key]
        out = self._compute(texts, ids, columns)
        self._memo[key] = out
        while len(self._memo) > 8:
            self._memo.popitem(last=False)
        return out

    def _compute(self, texts: list[str], ids: list[str], columns: Mapping[str, Any]) -> dict[str, list[float]]:
        c = self.cfg
        n = len(texts)
        parsed = [parse_memory(t, self.count_tokens, c.max_memory_tokens) for t in texts]
        windows = [window_from_columns(columns, i) for i in range(n)]
        out = {name: [0.0] * n for name in COMPONENTS}
        correct: list[bool | None] = [None] * n
        # Judge each window's descriptions in one call (an API judge sees the group together).
        groups: dict[str, list[int]] = {}
        for i, wid in enumerate(ids):
            groups.setdefault(wid, []).append(i)
        for wid, members in groups.items():
            judged = [i for i in members if parsed[i].description is not None]
            if judged:
                verdicts = self.judge.assess(windows[judged[0]], [parsed[i].description for i in judged])
                for i, v in zip(judged, verdicts):
                    correct[i] = v.correct
                    out["rules"][i] = rules_reward(v.redundant, v.overlay, c.rule_penalty)
            # Richness: rank the group's correct descriptions (the ones a trajectory wrote), best first.
            good = [i for i in members if correct[i]]
            positions: list[list[int]] = [[] for _ in members]
            if good:
                order = self.judge.rank(windows[good[0]], [parsed[i].description for i in good]) if len(good) > 1 \
                    else [0]
                for pos, j in enumerate(order):
                    positions[members.index(good[j])].append(pos)
            for i, r in zip(members, richness_rewards(positions, len(good), c.richness_scale)):
                out["richness"][i] = r
        for i, p in enumerate(parsed):
            out["format"][i] = format_reward(p, c.parse_failure, c.format_violation)
            out["correctness"][i] = correctness_reward(correct[i], c.correct, c.wrong)
            # A reply that did not parse is measured whole: a runaway reply is long whatever it contains.
            n_tok = p.n_tokens if p.description is not None else self.count_tokens(texts[i])
            out["length"][i] = length_penalty(n_tok, c.length_limit)
        return out

    def total(self, completions: Sequence[Any], columns: Mapping[str, Any]) -> list[float]:
        comps = self.components(completions, columns)
        w = dict(zip(COMPONENTS, self.weights))
        return [combine({k: comps[k][i] for k in COMPONENTS}, w) for i in range(len(completions))]


def window_from_columns(columns: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Row i of the batch's dataset columns as the window dict judges take."""
    keys = ("window_id", "clip", "segment_index", "t_start", "t_end", "prior_memories", "events", "caption",
            "images", "n_new_frames")
    return {k: columns[k][i] for k in keys if k in columns and columns[k] is not None}
