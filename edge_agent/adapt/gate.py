"""The gate: a newly trained adapter goes live only if it orders held-out pairs better and keeps the format.

Owns: the acceptance rule and its reasons. Both conditions are measured against the baseline the writer runs
now: the active adapter, or the base model (vector zero) when none is active.

1. Held-out preference accuracy: share of held-out pairs whose implicit reward margin
   beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))) is > 0 under the deployed vector, reference =
   vector zero; an exact tie counts 1/2, so the zero vector scores exactly 0.5 and "improves" means better
   than a coin flip. The new adapter must beat the baseline by more than `min_accuracy_gain`.
2. Format compliance: `compliance(vector) -> float` in [0, 1] (share of held-out windows where the writer's
   reply passes validation with that vector applied; the caller supplies it, e.g. the real writer on the
   llama.cpp backend). It must not drop by more than `max_compliance_drop`. Without a compliance function
   the gate refuses (it cannot show the format holds), unless `require_compliance=False`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from edge_agent.config import GateConfig
from edge_agent.types import SteeringVector

ComplianceFn = Callable[[SteeringVector | None], float]


@dataclass
class GateDecision:
    accepted: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


def decide(*, new_accuracy: float, base_accuracy: float, n_holdout: int, new_compliance: float | None,
           base_compliance: float | None, cfg: GateConfig, baseline: str = "base model") -> GateDecision:
    """Accept or reject with a one-line reason naming the numbers."""
    m = {"holdout_accuracy": new_accuracy, "baseline_accuracy": base_accuracy, "n_holdout": n_holdout,
         "compliance": new_compliance, "baseline_compliance": base_compliance, "baseline": baseline}
    if n_holdout < cfg.min_holdout_pairs:
        return GateDecision(False, f"only {n_holdout} held-out pairs (need {cfg.min_holdout_pairs})", m)
    if math.isnan(new_accuracy):
        return GateDecision(False, "held-out accuracy undefined", m)
    if not new_accuracy > base_accuracy + cfg.min_accuracy_gain:
        return GateDecision(False, f"held-out preference accuracy {new_accuracy:.3f} does not improve on "
                                   f"{baseline} {base_accuracy:.3f} (+{cfg.min_accuracy_gain:g} needed)", m)
    if new_compliance is None or base_compliance is None:
        if cfg.require_compliance:
            return GateDecision(False, "format compliance not measured (no compliance function)", m)
    elif new_compliance < base_compliance - cfg.max_compliance_drop:
        return GateDecision(False, f"format compliance drops {base_compliance:.3f} -> {new_compliance:.3f} "
                                   f"(allowed drop {cfg.max_compliance_drop:g})", m)
    comp = "" if new_compliance is None else f", compliance {base_compliance:.3f} -> {new_compliance:.3f}"
    return GateDecision(True, f"held-out accuracy {base_accuracy:.3f} -> {new_accuracy:.3f} vs {baseline}{comp}", m)
