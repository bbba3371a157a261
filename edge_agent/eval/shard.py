"""Benchmark-scale evaluation sharded over workers with Ray: each worker replays its share of the streams with its
own backend and its own store files; the outcomes are merged into exactly the run a serial replay gives.

Why streams are the unit: a stream's questions must be asked in time order against memories written so far, so
a stream never splits; streams are independent (one store per config and stream), so any partition of them
gives the same outcomes. The merge puts them back in serial order (streams outer, configs inner, questions by
time), so bootstrap intervals — seeded over that order — come out identical too.

`address=None` starts a local Ray with `workers` CPUs; a cluster address (`ray://host:10001` or `auto`) uses
that cluster, where each machine needs edge-agent, the model files and the benchmark data at the same paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edge_agent.config import Config
from edge_agent.errors import ConfigError
from edge_agent.eval.replay import ConfigSpec, ReplayRun
from edge_agent.eval.schema import Benchmark


def split_streams(benchmark: Benchmark, n: int) -> list[Benchmark]:
    """Round-robin shards of whole streams (shard i holds streams i, i+n, ...); empty shards are dropped."""
    shards = [Benchmark(benchmark.name, benchmark.items[i::n], benchmark.root, []) for i in range(n)]
    return [s for s in shards if s.items]


def merge_runs(benchmark: Benchmark, parts: Sequence[ReplayRun]) -> ReplayRun:
    """The serial run's order: for each stream of `benchmark`, each config's outcomes in question order."""
    if not parts:
        raise ValueError("no shard results to merge")
    configs = parts[0].configs
    by_key: dict[tuple[str, str], list[Any]] = {}
    stats = {}
    for part in parts:
        for o in part.outcomes:
            by_key.setdefault((o.stream, o.config), []).append(o)
        stats.update(part.stats)
    merged = ReplayRun(benchmark.name, list(configs), seconds=max(p.seconds for p in parts))
    for item in benchmark.items:
        for name, _ in configs:
            merged.outcomes.extend(by_key.get((item.key, name), []))
            if (name, item.key) in stats:
                merged.stats[(name, item.key)] = stats[(name, item.key)]
    return merged


def replay_shard(cfg: Config, shard: Benchmark, specs: Sequence[ConfigSpec], work_dir: Path,
                 judge_factory: Any = None, answerer_factory: Any = None) -> ReplayRun:
    """One worker's job: its own backend, embedder and stores; the same targets as a serial `eval`."""
    from edge_agent.eval.target import replay_with_runtime

    return replay_with_runtime(cfg, shard, specs, work_dir, judge_factory, answerer_factory)


def replay_sharded(cfg: Config, benchmark: Benchmark, specs: Sequence[ConfigSpec], work_dir: Path, *,
                   workers: int, address: str | None = None, judge_factory: Any = None,
                   answerer_factory: Any = None) -> ReplayRun:
    """Replay `benchmark` over `workers` Ray tasks (one CPU each) and merge the results in serial order."""
    if workers < 1:
        raise ConfigError(f"--workers={workers}: must be >= 1")
    try:
        import ray
    except ImportError:
        raise ConfigError("--workers/--ray-address: Ray is not installed (pip install 'edge-agent[eval]')") from None
    shards = split_streams(benchmark, workers)
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers, **kwargs)
    try:
        task = ray.remote(num_cpus=1)(replay_shard)
        parts = ray.get([task.remote(cfg, shard, list(specs), Path(work_dir) / f"shard{i}", judge_factory,
                                     answerer_factory)
                         for i, shard in enumerate(shards)])
    finally:
        if started:
            ray.shutdown()
    return merge_runs(benchmark, parts)
