"""The gate: a newly trained adapter goes live only if it orders held-out pairs better and keeps the format.

Owns: the acceptance rule and its reasons. Both conditions are measured against the baseline the writer runs
now: the active adapter, or the base model (vector zero) when none is active.

0. Evidence: at least `min_holdout_pairs` held-out pairs (default 8): one or two pairs decide nothing.
1. Held-out preference accuracy: share of held-out pairs whose implicit reward margin
   beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))) is > 0 under the deployed vector, reference =
   vector zero; an exact tie counts 1/2, so the zero vector scores exactly 0.5 and "improves" means better
   than a coin flip. The new adapter must beat the baseline by more than `min_accuracy_gain`, AND the
   improvement must be significant: the one-sided binomial p-value of ordering at least that many held-out
   pairs right by luck, each with the baseline's accuracy (at least a coin flip's 0.5), must be at most
   `max_p_value` (default 0.05: 7 of 8 pairs pass, 6 of 8 do not).
2. Format compliance: `compliance(vector) -> float | None` in [0, 1] (share of held-out windows where the
   writer's reply passes validation with that vector applied; the caller supplies it, e.g. the real writer on
   the llama.cpp backend; None when no held-out window could be rebuilt). It must not drop by more than
   `max_compliance_drop`. Unmeasured compliance (no function, or no window to measure on) refuses, unless
   `require_compliance=False`: a check over zero windows is no check.
3. Shrinking (`shrink_steps`, the caller's loop in adapt/loop.py): a vector that fails only on compliance is
   tried again at half its length, and again, each try through this whole rule. For the small vectors DPO
   trains here the held-out margins are nearly linear in the vector, so its length barely changes which pairs
   it orders right, while the format breaks only past some length: the direction is kept, the step shortened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from edge_agent.config import GateConfig
from edge_agent.types import SteeringVector

ComplianceFn = Callable[[SteeringVector | None], "float | None"]


@dataclass
class GateDecision:
    accepted: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    failed_on: str = ""  # "evidence", "accuracy", "significance" or "compliance"; "" when accepted


def p_value(n: int, accuracy: float, base_accuracy: float) -> float:
    """One-sided binomial p-value: P(X >= k), X ~ Binomial(n, p0), k = held-out pairs ordered right (ties,
    counted 1/2 in the accuracy, do not count here), p0 = the baseline's accuracy, at least 0.5 (a coin flip)."""
    if n <= 0 or math.isnan(accuracy):
        return 1.0
    k = math.floor(accuracy * n + 1e-9)
    p0 = min(max(0.5, 0.0 if math.isnan(base_accuracy) else base_accuracy), 1.0)
    return float(min(1.0, sum(math.comb(n, i) * p0 ** i * (1 - p0) ** (n - i) for i in range(k, n + 1))))


def decide(*, new_accuracy: float, base_accuracy: float, n_holdout: int, new_compliance: float | None,
           base_compliance: float | None, cfg: GateConfig, baseline: str = "base model",
           compliance_note: str = "no compliance function") -> GateDecision:
    """Accept or reject with a one-line reason naming the numbers."""
    p = p_value(n_holdout, new_accuracy, base_accuracy)
    m = {"holdout_accuracy": new_accuracy, "baseline_accuracy": base_accuracy, "n_holdout": n_holdout,
         "p_value": p, "compliance": new_compliance, "baseline_compliance": base_compliance, "baseline": baseline}
    if n_holdout < cfg.min_holdout_pairs:
        return GateDecision(False, f"only {n_holdout} held-out pairs (need {cfg.min_holdout_pairs}, "
                                   "adapt.gate.min_holdout_pairs)", m, "evidence")
    if math.isnan(new_accuracy):
        return GateDecision(False, "held-out accuracy undefined", m, "evidence")
    if not new_accuracy > base_accuracy + cfg.min_accuracy_gain:
        return GateDecision(False, f"held-out preference accuracy {new_accuracy:.3f} does not improve on "
                                   f"{baseline} {base_accuracy:.3f} (+{cfg.min_accuracy_gain:g} needed)", m, "accuracy")
    if p > cfg.max_p_value:
        return GateDecision(False, f"held-out accuracy {base_accuracy:.3f} -> {new_accuracy:.3f} over {n_holdout} "
                                   f"pairs is not significant vs {baseline} (p={p:.3f} > {cfg.max_p_value:g}, "
                                   "adapt.gate.max_p_value)", m, "significance")
    if new_compliance is None or base_compliance is None:
        if cfg.require_compliance:
            return GateDecision(False, f"format compliance not measured ({compliance_note})", m, "evidence")
    elif new_compliance < base_compliance - cfg.max_compliance_drop:
        return GateDecision(False, f"format compliance drops {base_compliance:.3f} -> {new_compliance:.3f} "
                                   f"(allowed drop {cfg.max_compliance_drop:g})", m, "compliance")
    comp = "" if new_compliance is None else f", compliance {base_compliance:.3f} -> {new_compliance:.3f}"
    return GateDecision(True, f"held-out accuracy {base_accuracy:.3f} -> {new_accuracy:.3f} over {n_holdout} pairs "
                              f"(p={p:.3f}) vs {baseline}{comp}", m)
