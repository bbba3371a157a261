"""The paper's metrics (Acc, Cov, Prec) with bootstrap intervals, memory size per minute, write latency per segment.

Definitions (TaskMem, memory-only QA):
  Acc  = correct / all questions
  Cov  = answered / all questions            (answered = did not abstain, i.e. did not pick E "not in memory")
  Prec = correct / answered                   so Acc = Cov x Prec
Edge cases: when nothing is answered Prec is 0 and `prec_defined` is False (Acc = Cov x Prec still holds: 0 = 0 x 0);
with no questions at all every rate is 0 and `n` is 0. The 95% interval resamples questions with replacement
(seeded) and takes the 2.5th and 97.5th percentiles of each rate; resamples in which nothing is answered count
Prec as 0, the same convention as the point value.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

N_BOOT = 1000


@dataclass(frozen=True)
class Outcome:
    """One graded question under one config (what the metrics need, plus enough to print a per-question log)."""

    question_id: str
    benchmark: str
    config: str
    category: str
    answered: bool  # False = abstained (E / "not in memory")
    correct: bool
    stream: str = ""
    asked_at: float = 0.0
    reference: str = ""
    given: str = ""  # the choice letter, or the open answer text
    adapter_id: str | None = None

    def __post_init__(self) -> None:
        if self.correct and not self.answered:
            raise ValueError(f"outcome {self.benchmark}/{self.question_id}: correct but not answered")


@dataclass
class Scores:
    """Acc / Cov / Prec of a set of outcomes, with 95% bootstrap intervals as (low, high)."""

    n: int
    n_answered: int
    n_correct: int
    acc: float
    cov: float
    prec: float
    prec_defined: bool
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "n_questions": self.n, "n_answered": self.n_answered, "n_correct": self.n_correct,
            "acc": self.acc, "acc_ci95": list(self.ci.get("acc", (self.acc, self.acc))),
            "cov": self.cov, "cov_ci95": list(self.ci.get("cov", (self.cov, self.cov))),
            "prec": self.prec, "prec_ci95": list(self.ci.get("prec", (self.prec, self.prec))),
            "prec_defined": self.prec_defined,
        }


def rates(n: int, n_answered: int, n_correct: int) -> tuple[float, float, float, bool]:
    """(acc, cov, prec, prec_defined) from counts, with the edge cases of the module docstring."""
    if n == 0:
        return 0.0, 0.0, 0.0, False
    acc, cov = n_correct / n, n_answered / n
    if n_answered == 0:
        return acc, cov, 0.0, False
    return acc, cov, n_correct / n_answered, True


def bootstrap_ci(answered: np.ndarray, correct: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of acc/cov/prec over `n_boot` resamples of the questions (with replacement)."""
    n = len(answered)
    if n == 0 or n_boot <= 0:
        acc, cov, prec, _ = rates(n, int(answered.sum()), int(correct.sum()))
        return {"acc": (acc, acc), "cov": (cov, cov), "prec": (prec, prec)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # one row of question indices per resample
    a = answered[idx].sum(axis=1).astype(float)
    c = correct[idx].sum(axis=1).astype(float)
    prec = np.divide(c, a, out=np.zeros_like(c), where=a > 0)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(x: np.ndarray) -> tuple[float, float]:
        return float(np.percentile(x, lo)), float(np.percentile(x, hi))

    return {"acc": interval(c / n), "cov": interval(a / n), "prec": interval(prec)}


def summarize(outcomes: Iterable[Outcome], *, n_boot: int = N_BOOT, seed: int = 0) -> Scores:
    """Acc / Cov / Prec of `outcomes` with their bootstrap intervals."""
    outs = list(outcomes)
    answered = np.array([o.answered for o in outs], dtype=bool)
    correct = np.array([o.correct for o in outs], dtype=bool)
    n, n_ans, n_cor = len(outs), int(answered.sum()), int(correct.sum())
    acc, cov, prec, defined = rates(n, n_ans, n_cor)
    return Scores(n, n_ans, n_cor, acc, cov, prec, defined,
                  bootstrap_ci(answered, correct, n_boot=n_boot, seed=seed))


def by_category(outcomes: Iterable[Outcome], *, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Scores]:
    """`summarize` per question category, categories in sorted order."""
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[o.category].append(o)
    return {cat: summarize(groups[cat], n_boot=n_boot, seed=seed) for cat in sorted(groups)}


def memory_bytes_per_minute(memory_bytes: int, video_seconds: float) -> float:
    """Bytes of memory text per minute of video watched (0 when no video was watched)."""
    if video_seconds <= 0:
        return 0.0
    return memory_bytes / (video_seconds / 60.0)


def memory_bytes(texts: Iterable[str]) -> int:
    """UTF-8 size of memory texts (what the metric counts: the text a device keeps, not the JSON around it)."""
    return sum(len(t.encode("utf-8")) for t in texts)


@dataclass
class LatencyStats:
    n: int
    mean: float
    p50: float
    p95: float

    def to_dict(self) -> dict:
        return {"n_segments": self.n, "mean": self.mean, "p50": self.p50, "p95": self.p95}


def latency_stats(latencies: Iterable[float]) -> LatencyStats:
    """Mean, median and 95th percentile (numpy's linear interpolation) of write latency per segment, seconds."""
    x = np.asarray(list(latencies), dtype=float)
    if x.size == 0:
        return LatencyStats(0, 0.0, 0.0, 0.0)
    return LatencyStats(int(x.size), float(x.mean()), float(np.percentile(x, 50)), float(np.percentile(x, 95)))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of k successes in n (pooled counts, where a bootstrap over outcomes is not at
    hand; used by the tools that report held-out tables)."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / den
    return max(0.0, c - h), min(1.0, c + h)
