"""Acc / Cov / Prec, bootstrap intervals, memory size and write latency against hand-computed cases."""

from __future__ import annotations

import pytest

from edge_agent.eval.metrics import (Outcome, by_category, latency_stats, memory_bytes, memory_bytes_per_minute,
                                     summarize)


def outs(spec: str, category: str = "c") -> list[Outcome]:
    """'C' correct, 'W' answered wrong, 'A' abstained."""
    return [Outcome(f"q{i}", "b", "cfg", category, answered=ch != "A", correct=ch == "C") for i, ch in enumerate(spec)]


def test_hand_computed_rates_and_acc_equals_cov_times_prec():
    s = summarize(outs("CCCCWWAAAA"), n_boot=0)
    assert (s.n, s.n_answered, s.n_correct) == (10, 6, 4)
    assert s.acc == pytest.approx(0.4) and s.cov == pytest.approx(0.6) and s.prec == pytest.approx(4 / 6)
    assert s.prec_defined and s.acc == pytest.approx(s.cov * s.prec)


def test_all_abstain_gives_zero_prec_flagged_undefined():
    s = summarize(outs("AAA"), n_boot=200)
    assert (s.acc, s.cov, s.prec, s.prec_defined) == (0.0, 0.0, 0.0, False)
    assert s.ci == {"acc": (0.0, 0.0), "cov": (0.0, 0.0), "prec": (0.0, 0.0)}
    assert s.to_dict()["prec_defined"] is False


def test_no_questions_is_all_zero():
    s = summarize([], n_boot=200)
    assert (s.n, s.acc, s.cov, s.prec, s.prec_defined) == (0, 0.0, 0.0, 0.0, False)
    assert s.ci["acc"] == (0.0, 0.0)
    assert by_category([]) == {}


def test_bootstrap_interval_is_seeded_and_brackets_the_value():
    data = outs("CCCWWAACWCAC")
    a, b = summarize(data, seed=3), summarize(data, seed=3)
    assert a.ci == b.ci
    assert summarize(data, seed=4).ci != a.ci
    for m in ("acc", "cov", "prec"):
        lo, hi = a.ci[m]
        assert 0.0 <= lo <= getattr(a, m) <= hi <= 1.0


def test_bootstrap_degenerate_and_hand_derived_intervals():
    s = summarize(outs("CCCC"))
    assert s.ci == {"acc": (1.0, 1.0), "cov": (1.0, 1.0), "prec": (1.0, 1.0)}
    # One correct answer and one abstention: a resample of two draws has no answer with p = 1/4 (> 2.5%),
    # so Prec's interval starts at the 0 convention; two answers with p = 1/4 too, so every interval ends at 1.
    s = summarize(outs("CA"), n_boot=2000, seed=0)
    assert s.ci["prec"] == (0.0, 1.0) and s.ci["acc"] == (0.0, 1.0) and s.ci["cov"] == (0.0, 1.0)


def test_per_category():
    cats = by_category(outs("CW", "counting") + outs("AAC", "location"), n_boot=0)
    assert list(cats) == ["counting", "location"]
    assert (cats["counting"].acc, cats["counting"].cov, cats["counting"].prec) == (0.5, 1.0, 0.5)
    assert cats["location"].acc == pytest.approx(1 / 3) and cats["location"].cov == pytest.approx(1 / 3)
    assert cats["location"].prec == 1.0


def test_correct_implies_answered():
    with pytest.raises(ValueError, match="correct but not answered"):
        Outcome("q", "b", "cfg", "c", answered=False, correct=True)


def test_memory_bytes_per_minute_counts_utf8_bytes():
    assert memory_bytes(["abc", "é"]) == 5
    assert memory_bytes_per_minute(5, 30.0) == 10.0
    assert memory_bytes_per_minute(120, 120.0) == 60.0
    assert memory_bytes_per_minute(0, 0.0) == 0.0


def test_latency_mean_p50_p95():
    s = latency_stats([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean, s.p50) == (4, 2.5, 2.5)
    assert s.p95 == pytest.approx(3.85)  # linear interpolation: 1 + 0.95 * 3 = 3.85 -> between 3 and 4
    assert latency_stats([]).to_dict() == {"n_segments": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0}
