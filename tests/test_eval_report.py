"""The --json objects and the report folder (markdown table + PNG charts) built from a hand-made replay."""

from __future__ import annotations

import json
import math

import pytest

from edge_agent.eval.metrics import Outcome
from edge_agent.eval.replay import ReplayRun
from edge_agent.eval.report import markdown_report, results_json, write_report
from edge_agent.eval.schema import StreamStats


def hand_run() -> ReplayRun:
    def o(qid, cfg, cat, answered, correct, t=10.0):
        return Outcome(qid, "synthetic", cfg, cat, answered, correct, "synthetic/clip", t, "A", "A" if correct else "E")

    run = ReplayRun("synthetic", [("baseline", None), ("phase2", "ad-1"), ("silent", None)])
    run.outcomes = [
        o("q1", "baseline", "counting", True, True), o("q2", "baseline", "counting", True, False),
        o("q3", "baseline", "location", False, False), o("q4", "baseline", "location", True, True, math.inf),
        o("q1", "phase2", "counting", True, True), o("q2", "phase2", "counting", True, True),
        o("q3", "phase2", "location", True, True), o("q4", "phase2", "location", False, False),
        o("q1", "silent", "counting", False, False), o("q2", "silent", "counting", False, False),
    ]
    run.stats = {("baseline", "synthetic/clip"): StreamStats(600, 12, 12, 120.0, [1.0, 2.0, 3.0, 4.0]),
                 ("phase2", "synthetic/clip"): StreamStats(300, 12, 12, 120.0, [2.0] * 12),
                 ("silent", "synthetic/clip"): StreamStats(0, 0, 12, 120.0, [])}
    return run


def test_results_json_has_one_object_per_config_with_hand_computed_numbers():
    results = results_json(hand_run(), n_boot=200, seed=0)
    assert [r["config"] for r in results] == ["baseline", "phase2", "silent"]
    b, p, s = results
    assert (b["benchmark"], b["adapter_id"], b["n_questions"], b["n_streams"]) == ("synthetic", None, 4, 1)
    assert (b["acc"], b["cov"], b["prec"]) == (0.5, 0.75, pytest.approx(2 / 3))
    assert b["acc_ci95"][0] <= b["acc"] <= b["acc_ci95"][1]
    assert b["by_category"]["counting"]["acc"] == 0.5 and b["by_category"]["location"]["cov"] == 0.5
    assert b["memory"] == {"bytes": 600, "n_memories": 12, "n_segments": 12, "video_seconds": 120.0,
                           "bytes_per_min": 300.0}
    assert b["write_latency_s"]["mean"] == 2.5 and b["write_latency_s"]["p95"] == pytest.approx(3.85)
    assert (p["adapter_id"], p["acc"], p["cov"], p["prec"]) == ("ad-1", 0.75, 0.75, 1.0)
    assert (s["acc"], s["cov"], s["prec"], s["prec_defined"]) == (0.0, 0.0, 0.0, False)  # all abstained
    assert s["write_latency_s"]["n_segments"] == 0 and s["memory"]["bytes_per_min"] == 0.0
    json.dumps(results, allow_nan=False)  # plain, strict JSON


def test_no_question_config_is_reported_as_zero():
    run = ReplayRun("synthetic", [("empty", None)])
    [r] = results_json(run, n_boot=50)
    assert (r["n_questions"], r["acc"], r["cov"], r["prec"], r["prec_defined"]) == (0, 0.0, 0.0, 0.0, False)
    assert r["by_category"] == {} and r["memory"]["bytes_per_min"] == 0.0
    assert "| empty | - | 0 | 0.0 [0.0, 0.0]" in markdown_report([r])


def test_write_report_files_and_numbers(tmp_path):
    run = hand_run()
    results = results_json(run, n_boot=200, seed=0)
    written = write_report(results, tmp_path / "report", outcomes=run.outcomes)
    names = {p.name for p in written.values()}
    assert names == {"results.json", "report.md", "synthetic_accuracy_by_category.png", "synthetic_acc_cov_prec.png",
                     "outcomes.jsonl"}
    for path in written.values():
        assert path.is_file() and path.stat().st_size > 0
    for key in ("synthetic_accuracy_by_category", "synthetic_acc_cov_prec"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = written["markdown"].read_text()
    b = results[0]
    lo, hi = b["acc_ci95"]
    assert f"| baseline | - | 4 | 50.0 [{100 * lo:.1f}, {100 * hi:.1f}] | 75.0 [" in md
    assert "| phase2 | ad-1 | 4 | 75.0 [" in md and "| 300.0 |" in md and "| 150.0 |" in md
    assert "| 0.0* [" in md  # the all-abstain Prec is marked
    assert "| counting | 50.0 (2) | 100.0 (2) | 0.0 (2) |" in md
    assert "| location | 50.0 (2) | 50.0 (2) | - |" in md
    assert json.loads(written["json"].read_text()) == results
    lines = [json.loads(line) for line in written["outcomes"].read_text().splitlines()]
    assert len(lines) == 10 and lines[3]["asked_at"] is None and lines[0]["asked_at"] == 10.0
