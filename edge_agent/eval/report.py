"""Evaluation output: one JSON object per (benchmark, config), and a report folder with a markdown table and PNG charts.

JSON object (rates are fractions 0..1; the markdown shows percentages):
  {"benchmark", "config", "adapter_id", "n_streams", "n_questions", "n_answered", "n_correct",
   "acc", "acc_ci95": [lo, hi], "cov", "cov_ci95", "prec", "prec_ci95", "prec_defined",
   "by_category": {category: {n_questions, n_answered, n_correct, acc, acc_ci95, cov, cov_ci95, prec, prec_ci95,
                              prec_defined}},
   "memory": {"bytes", "n_memories", "n_segments", "video_seconds", "bytes_per_min"},
   "write_latency_s": {"n_segments", "mean", "p50", "p95"},
   "bootstrap": {"n": 1000, "seed": 0, "level": 0.95}, "replay_seconds"}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from edge_agent.errors import ConfigError
from edge_agent.eval.metrics import (N_BOOT, Outcome, by_category, latency_stats, memory_bytes_per_minute,
                                     summarize)
from edge_agent.eval.replay import ReplayRun


def results_json(run: ReplayRun, *, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """The `--json` objects of one replay: one per config, in the order the configs were given."""
    results = []
    for name, adapter_id in run.configs:
        outs = [o for o in run.outcomes if o.config == name]
        stats = [s for (cfg, _), s in run.stats.items() if cfg == name]
        scores = summarize(outs, n_boot=n_boot, seed=seed)
        total_bytes = sum(s.memory_bytes for s in stats)
        seconds = sum(s.video_seconds for s in stats)
        latencies = [x for s in stats for x in s.write_latencies]
        results.append({
            "benchmark": run.benchmark,
            "config": name,
            "adapter_id": adapter_id,
            "n_streams": len(stats),
            **scores.to_dict(),
            "by_category": {cat: sc.to_dict() for cat, sc in by_category(outs, n_boot=n_boot, seed=seed).items()},
            "memory": {"bytes": total_bytes, "n_memories": sum(s.n_memories for s in stats),
                       "n_segments": sum(s.n_segments for s in stats), "video_seconds": seconds,
                       "bytes_per_min": memory_bytes_per_minute(total_bytes, seconds)},
            "write_latency_s": latency_stats(latencies).to_dict(),
            "bootstrap": {"n": n_boot, "seed": seed, "level": 0.95},
            "replay_seconds": run.seconds,
        })
    return results


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _with_ci(r: dict, metric: str) -> str:
    lo, hi = r[f"{metric}_ci95"]
    mark = "" if metric != "prec" or r.get("prec_defined", True) else "*"
    return f"{_pct(r[metric])}{mark} [{_pct(lo)}, {_pct(hi)}]"


def markdown_report(results: list[dict]) -> str:
    """Markdown: per benchmark a table of configs (Acc/Cov/Prec with 95% CI, memory, latency) and one of categories."""
    lines = ["# Evaluation report", "",
             "Memory-only QA (the TaskMem protocol): Acc = correct / all, Cov = answered / all, "
             "Prec = correct / answered. Percentages with bootstrap 95% intervals; "
             "* marks a Prec with nothing answered (reported as 0).", ""]
    for bench in dict.fromkeys(r["benchmark"] for r in results):
        rows = [r for r in results if r["benchmark"] == bench]
        lines += [f"## {bench}", "",
                  "| config | adapter | questions | Acc % | Cov % | Prec % | memory B/min | write mean s | "
                  "write p50 s | write p95 s |",
                  "|---|---|---:|---|---|---|---:|---:|---:|---:|"]
        for r in rows:
            lat = r["write_latency_s"]
            lines.append(f"| {r['config']} | {r['adapter_id'] or '-'} | {r['n_questions']} | {_with_ci(r, 'acc')} | "
                         f"{_with_ci(r, 'cov')} | {_with_ci(r, 'prec')} | {r['memory']['bytes_per_min']:.1f} | "
                         f"{lat['mean']:.3f} | {lat['p50']:.3f} | {lat['p95']:.3f} |")
        cats = sorted({c for r in rows for c in r["by_category"]})
        if cats:
            lines += ["", "Accuracy by category (%, questions in brackets):", "",
                      "| category | " + " | ".join(r["config"] for r in rows) + " |",
                      "|---|" + "---:|" * len(rows)]
            for cat in cats:
                cells = []
                for r in rows:
                    c = r["by_category"].get(cat)
                    cells.append(f"{_pct(c['acc'])} ({c['n_questions']})" if c else "-")
                lines.append(f"| {cat} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _bar_chart(path: Path, title: str, groups: list[str], series: dict[str, list[float]],
               errors: dict[str, list[tuple[float, float]]] | None, ylabel: str) -> None:
    from matplotlib.figure import Figure  # Agg canvas: no display, no pyplot global state

    fig = Figure(figsize=(max(6.0, 0.9 * len(groups) * max(1, len(series)) + 2), 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        yerr = None
        if errors:
            ci = errors[label]
            yerr = [[max(0.0, v - lo) for v, (lo, _) in zip(values, ci)],
                    [max(0.0, hi - v) for v, (_, hi) in zip(values, ci)]]
        ax.bar(xs, values, width=width, label=label, yerr=yerr, capsize=3)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylim(0, 105)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_report(results: list[dict], out_dir: Path | str, *,
                 outcomes: Iterable[Outcome] | None = None) -> dict[str, Path]:
    """Write results.json, report.md and per benchmark two PNG charts (accuracy by category per config; Acc/Cov/Prec
    per config with 95% intervals) into `out_dir`; with `outcomes`, also outcomes.jsonl (one graded question a line).
    Returns the written paths by name.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("eval --report: the charts need matplotlib (pip install matplotlib)") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    written["json"] = out / "results.json"
    written["json"].write_text(json.dumps(finite(results), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    written["markdown"] = out / "report.md"
    written["markdown"].write_text(markdown_report(results), encoding="utf-8")

    for bench in dict.fromkeys(r["benchmark"] for r in results):
        rows = [r for r in results if r["benchmark"] == bench]
        cats = sorted({c for r in rows for c in r["by_category"]})
        if cats:
            path = out / f"{_safe(bench)}_accuracy_by_category.png"
            series = {r["config"]: [100 * r["by_category"][c]["acc"] if c in r["by_category"] else 0.0
                                    for c in cats] for r in rows}
            _bar_chart(path, f"{bench}: accuracy by category", cats, series, None, "Acc %")
            written[f"{bench}_accuracy_by_category"] = path
        metrics = ["acc", "cov", "prec"]
        path = out / f"{_safe(bench)}_acc_cov_prec.png"
        series = {r["config"]: [100 * r[m] for m in metrics] for r in rows}
        errors = {r["config"]: [(100 * r[f"{m}_ci95"][0], 100 * r[f"{m}_ci95"][1]) for m in metrics] for r in rows}
        _bar_chart(path, f"{bench}: Acc / Cov / Prec per config (95% interval)", ["Acc", "Cov", "Prec"],
                   series, errors, "%")
        written[f"{bench}_acc_cov_prec"] = path

    if outcomes is not None:
        written["outcomes"] = out / "outcomes.jsonl"
        with written["outcomes"].open("w", encoding="utf-8") as f:
            for o in outcomes:
                f.write(json.dumps(finite(dict(o.__dict__)), allow_nan=False) + "\n")
    return written


def finite(value: object) -> object:
    """A copy safe for strict JSON: inf/nan become None (an `asked_at` of None means "after the whole stream")."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
