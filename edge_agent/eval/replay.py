"""Streaming replay: feed each benchmark stream up to each question's time, then ask it, for several configs side by side.

The driver knows nothing of capture, models or SQLite. A config under evaluation is an `ReplayTarget` (the lead
wires it to the runtime):

- `ingest_until(stream, t)` feeds the stream through the same capture -> writer -> store path as `run`, up to
  stream time `t` (`inf` = to the end), continuing where the previous call stopped;
- `ask(question, until=t)` answers from memories of `question.video` whose t_end <= t only, never from video;
- `stream_stats(stream)` reports what was written (called once, after the stream's last question; the runner may
  release the stream's resources then).

For every stream and every runner, questions go in order of `asked_at`; the driver calls `ingest_until` up to a
question's time before asking it, never asks before, and checks every memory the answerer was shown ended by the
question's time (`FutureMemoryError` otherwise: that would be a leak, not a user mistake). Streams are the outer
loop and configs the inner one, so the first stream's comparison is complete early in a long run.

Wiring notes for a runtime-backed runner: each config needs its own store (the same video has the same
fingerprint, so a shared store would "resume" and the second config would write nothing); answers must be
restricted to the question's stream as well as to t_end <= t; a stream of several pieces (EgoLife) is ingested
piece after piece with origin = piece.offset, so memory times come out in stream seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

from edge_agent.errors import ConfigError
from edge_agent.eval.grading import Judge, grade
from edge_agent.eval.metrics import Outcome
from edge_agent.eval.schema import Answer, Benchmark, BenchItem, BenchQuestion, StreamStats

TIME_EPS = 1e-6  # stream-time comparisons tolerate float noise from offsets


class FutureMemoryError(RuntimeError):
    """An answer was given from a memory that ends after the question's time: the replay leaked the future."""


@runtime_checkable
class ReplayTarget(Protocol):
    """One config (a writer/adapter setting) evaluated on a benchmark; see the module docstring."""

    name: str
    adapter_id: str | None

    def ingest_until(self, stream: BenchItem, t: float) -> None:
        ...

    def ask(self, question: BenchQuestion, until: float) -> Answer:
        ...

    def stream_stats(self, stream: BenchItem) -> StreamStats:
        ...


@dataclass
class ReplayRun:
    """Everything a replay produced: graded outcomes and, per (config, stream), what was written."""

    benchmark: str
    configs: list[tuple[str, str | None]]  # (name, adapter_id) in the order given
    outcomes: list[Outcome] = field(default_factory=list)
    stats: dict[tuple[str, str], StreamStats] = field(default_factory=dict)  # (config, stream key) -> stats
    seconds: float = 0.0


@dataclass(frozen=True)
class ConfigSpec:
    """A config to compare, as given on the command line: a display name and the adapter it writes with."""

    name: str
    adapter_id: str | None


BASELINE_NAMES = ("baseline", "none")


def parse_config_spec(text: str) -> ConfigSpec:
    """'baseline' (or 'none') -> no adapter; 'ADAPTER_ID' -> that adapter, named by its id; 'NAME=ADAPTER_ID' ->
    that adapter under NAME ('NAME=baseline' names the no-adapter config)."""
    s = text.strip()
    name, sep, adapter = s.partition("=")
    name, adapter = name.strip(), adapter.strip()
    if not name or (sep and not adapter):
        raise ConfigError(f"eval config {text!r}: expected 'baseline', an adapter id, or NAME=ADAPTER_ID")
    if not sep:
        adapter = name
    return ConfigSpec(name, None if adapter.lower() in BASELINE_NAMES else adapter)


def _check_runners(runners: Sequence[ReplayTarget]) -> None:
    if not runners:
        raise ConfigError("eval configs: none given (expected at least one, e.g. 'baseline')")
    names = [r.name for r in runners]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"eval configs: name {dupes[0]!r} given twice")


def replay_stream(stream: BenchItem, runner: ReplayTarget, benchmark: str, *, judge: Judge | None = None,
                  on_question: Callable[[], None] | None = None) -> tuple[list[Outcome], StreamStats]:
    """Replay one stream for one config: ingest up to each question's time, ask, check, grade."""
    outcomes = []
    ingested = float("-inf")
    for q in sorted(stream.questions, key=lambda q: (q.asked_at, q.id)):
        if q.video != stream.key:
            raise ValueError(f"question {benchmark}/{q.id} belongs to stream {q.video!r}, not {stream.key!r}")
        t = q.asked_at
        if t > ingested:
            runner.ingest_until(stream, t)
            ingested = t
        answer = runner.ask(q, until=t)
        late = [x for x in answer.memory_t_ends if x > t + TIME_EPS]
        if late:
            raise FutureMemoryError(f"config {runner.name}: question {benchmark}/{q.id} asked at {t:.3f}s was "
                                    f"answered from a memory ending at {max(late):.3f}s")
        answered, correct = grade(q, answer, judge)
        given = (answer.choice or "") if q.is_multiple_choice else answer.text
        outcomes.append(Outcome(q.id, benchmark, runner.name, q.category, answered, correct, stream.key, t,
                                q.answer, given, runner.adapter_id))
        if on_question:
            on_question()
    return outcomes, runner.stream_stats(stream)


def replay(benchmark: Benchmark, runners: Sequence[ReplayTarget], *, judge: Judge | None = None,
           progress: bool = True, console: object | None = None) -> ReplayRun:
    """Replay every stream of `benchmark` for every runner; returns outcomes and per-stream write statistics.

    A benchmark with open-ended questions needs a `judge`. `progress` shows a rich progress bar (on `console`).
    """
    _check_runners(runners)
    if benchmark.has_open_ended and judge is None:
        raise ConfigError(f"benchmark {benchmark.name}: has open-ended questions, a judge is required")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    run = ReplayRun(benchmark.name, [(r.name, r.adapter_id) for r in runners])
    start = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task(f"eval {benchmark.name}", total=benchmark.n_questions * len(runners))
        for stream in benchmark.items:
            for runner in runners:
                bar.update(task, description=f"{benchmark.name} {stream.key} [{runner.name}]")
                outcomes, stats = replay_stream(stream, runner, benchmark.name, judge=judge,
                                                on_question=lambda: bar.advance(task))
                run.outcomes.extend(outcomes)
                run.stats[(runner.name, stream.key)] = stats
    run.seconds = time.perf_counter() - start
    return run
