"""`edge-agent eval`: load a benchmark, replay it through the runtime for each config, score it, write the report."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from edge_agent.config import Config
from edge_agent.errors import ConfigError
from edge_agent.eval.grading import BackendJudge, CachedJudge, OpenAIJudge
from edge_agent.eval.loaders import load_benchmark, load_synthetic
from edge_agent.eval.remote import OpenAIAnswerer
from edge_agent.eval.replay import parse_config_spec
from edge_agent.eval.report import results_json, write_report
from edge_agent.eval.target import replay_with_runtime


def synthetic_data(cfg: Config, seed: int, minutes: float) -> Path:
    """The synthetic clip for a seed, rendered once into the data folder and reused while its format is current."""
    from edge_agent.synth import FORMAT_VERSION, generate

    out = cfg.home / "eval" / "data" / f"synthetic-seed{seed}-{minutes:g}min"
    if not (out / "video.mp4").is_file() or _format_version(out / "questions.json") != FORMAT_VERSION:
        generate(seed=seed, minutes=minutes, out_dir=out)
    return out


def _format_version(questions: Path) -> int | None:
    try:
        return json.loads(questions.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def make_judge(cache_file: Path, judge_url: str | None, judge_model: str | None, judge_key_env: str | None,
               backend: Any):
    """The grader of open answers: the endpoint at `judge_url` (off the device: an explicit opt-in), else the local
    model; cached on disk. A module-level function so sharded workers can build their own."""
    inner = OpenAIJudge(judge_url, judge_model or "gpt-4o", judge_key_env) if judge_url else BackendJudge(backend)
    return CachedJudge(inner, cache_file)


def run_benchmark(cfg: Config, bench: str, *, data: Path | None = None, seed: int = 0, minutes: float = 2.0,
             configs: Sequence[str] = ("baseline",), max_questions: int | None = None,
             judge_url: str | None = None, judge_model: str | None = None, judge_key_env: str | None = None,
             report_dir: Path | None = None, console: Any = None, progress: bool = True, workers: int = 1,
             ray_address: str | None = None, answerer_url: str | None = None, answerer_model: str | None = None,
             answerer_key_env: str | None = None) -> list[dict]:
    """Replay `bench` for every config (\"baseline\", an adapter id, or NAME=ADAPTER_ID) and return the scores.
    `workers` > 1 or a `ray_address` shard the streams over Ray workers (eval/shard.py): same numbers."""
    if bench == "synthetic" and data is None:
        benchmark = load_synthetic(synthetic_data(cfg, seed, minutes))
    elif data is None:
        raise ConfigError(f"--bench {bench}: needs --data DIR with the benchmark's files")
    else:
        benchmark = load_benchmark(bench, data)
    if max_questions is not None:
        benchmark = benchmark.limit(max_questions=max_questions)
    specs = [parse_config_spec(c) for c in configs]

    work = cfg.home / "eval" / "runs" / f"{bench}-{time.strftime('%Y%m%d-%H%M%S')}"
    judges = partial(make_judge, cfg.cache_dir / "judge.sqlite", judge_url, judge_model, judge_key_env) \
        if benchmark.has_open_ended else None
    answerers = partial(OpenAIAnswerer, answerer_url, answerer_model or "gpt-4o", answerer_key_env) \
        if answerer_url else None
    if workers > 1 or ray_address:
        from edge_agent.eval.shard import replay_sharded

        run = replay_sharded(cfg, benchmark, specs, work, workers=workers, address=ray_address,
                             judge_factory=judges, answerer_factory=answerers)
    else:
        run = replay_with_runtime(cfg, benchmark, specs, work, judges, answerers, progress=progress,
                                  console=console)
    results = results_json(run, seed=seed)
    if report_dir is not None:
        write_report(results, report_dir, outcomes=run.outcomes)
    return results
