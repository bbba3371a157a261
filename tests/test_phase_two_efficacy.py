"""Does Phase Two work? A short, seeded run of tools/experiment_phase_two.py on the embedded default: two wearers
live two held-out days each through the CLI (run, ask, feedback, adapt), then both are scored on a held-out seed.

The mechanism must hold (every night forms pairs on both sides of the split and the gate measures them; the eval
asks the dominant category's questions). The effect the issue asks for (the dominant category up by more than its
bootstrap interval, and the two wearers' vectors apart) is not reached by the shipped default: a strict xfail, so
the day it passes it says so (README, "Does Phase Two work?", has the full-size runs and why).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMINANT = {"A": "object_location", "B": "person"}
MIX = {"A": {"object_location"}, "B": {"person", "activity_at_time"}}  # the tool's MIXES: 80 %; 45 + 35 %


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("phase_two")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "experiment_phase_two.py"), "run", "--out", str(out),
                           "--settings", str(ROOT / "configs" / "phase_two" / "product.toml"), "--days", "2",
                           "--minutes", "4", "--questions-per-day", "10,20", "--eval-minutes", "3", "--eval-seeds",
                           "1", "--eval-questions-per-minute", "15", "--wearers", "A", "B"],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _days(out: Path, wearer: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / f"wearer_{wearer}" / "days").glob("day*.json"))]


def _dominant(out: Path, wearer: str, config: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-question (answered, correct) of the wearer's dominant category under `config`, from eval's outcomes."""
    rows = [r for r in json.loads((out / f"wearer_{wearer}" / "eval.json").read_text()) if r["config"] == config]
    cat = [r["by_category"].get(DOMINANT[wearer], {}) for r in rows]
    n = sum(c.get("n_questions", 0) for c in cat)
    answered = sum(c.get("n_answered", 0) for c in cat)
    correct = sum(c.get("n_correct", 0) for c in cat)
    return (np.array([1] * answered + [0] * (n - answered), dtype=bool),
            np.array([1] * correct + [0] * (n - correct), dtype=bool))


@pytest.mark.slow
def test_every_night_forms_pairs_the_gate_measures_and_the_eval_asks_the_dominant_category(experiment):
    asked = {w: [a["category"] for d in _days(experiment, w) for a in d["asked"]] for w in ("A", "B")}

    def share(wearer: str, categories: set[str]) -> float:
        return sum(c in categories for c in asked[wearer]) / len(asked[wearer])

    # the wearer's mix decides what is asked (short days hold too few of one kind for the mix's own shares)
    assert share("A", MIX["A"]) > share("B", MIX["A"]) and share("B", MIX["B"]) > share("A", MIX["B"])
    for wearer in ("A", "B"):
        days = _days(experiment, wearer)
        assert len(days) == 2 and all(len(d["asked"]) > 0 for d in days)
        for d in days:
            adapt = d["adapt"]
            assert adapt["status"] in ("activated", "rejected"), adapt  # never skipped: pairs on both sides
            assert adapt["pairs"]["train"] > 0 and adapt["pairs"]["holdout"] > 0
            assert 0.0 <= adapt["metrics"]["holdout_accuracy"] <= 1.0 and adapt["reason"]
        answered, _ = _dominant(experiment, wearer, "baseline")
        assert len(answered) > 0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="on the shipped default a vector can reach only 2 of 29 'where did I leave X' questions "
                   "(the rest is what the writer sees), 'who did I meet' is decided by the face registry, not the "
                   "writer (right for 164 of 191 held-out questions without a vector), and nights often fail the "
                   "gate: README 'Does Phase Two work?'")
def test_each_wearers_adapter_raises_its_dominant_category_beyond_the_interval(experiment):
    from edge_agent.eval.metrics import bootstrap_ci

    vectors = json.loads((experiment / "vectors.json").read_text())
    for wearer in ("A", "B"):
        live = [d["adapt"]["adapter_id"] for d in _days(experiment, wearer) if d["adapt"]["status"] == "activated"]
        assert live, f"wearer {wearer}: no night activated an adapter"
        rows = json.loads((experiment / f"wearer_{wearer}" / "eval.json").read_text())
        config = [r["config"] for r in rows if r["config"] != "baseline"][-1]  # the adapter live at the end
        base_answered, base_correct = _dominant(experiment, wearer, "baseline")
        answered, correct = _dominant(experiment, wearer, config)
        lo, hi = bootstrap_ci(base_answered, base_correct)["acc"]
        assert correct.mean() - base_correct.mean() > (hi - lo) / 2, (
            f"wearer {wearer}: {DOMINANT[wearer]} {base_correct.sum()} -> {correct.sum()} of {len(correct)} with "
            f"{config}, interval half-width {(hi - lo) / 2:.2f}")
    assert vectors["cosine_A_B"] < 0.5
