"""The replay driver with fake runners: ingest before asking, never a memory of the future, configs side by side."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from rich.console import Console

from edge_agent.errors import ConfigError
from edge_agent.eval.replay import ReplayTarget, FutureMemoryError, replay
from edge_agent.eval.report import results_json
from edge_agent.eval.schema import Answer, Benchmark, BenchItem, BenchQuestion, StreamStats, VideoPiece

SEGMENT = 10.0


def q(id_, stream, t, answer="A", evidence=None, category="cat", options=("a", "b", "c", "d")):
    return BenchQuestion(id_, "fake", stream, t, f"question {id_}?", options, answer, category, evidence)


def bench() -> Benchmark:
    # questions deliberately out of order; s2 has one asked after the whole stream
    s1 = BenchItem("s1", [VideoPiece(Path("s1.mp4"))], [
        q("late", "s1", 55.0, "B", evidence=(30.0, 40.0), category="where"),
        q("early", "s1", 12.0, "A", evidence=(0.0, 10.0)),
        q("future", "s1", 25.0, "C", evidence=(40.0, 50.0)),  # its evidence lies after its time: must abstain
        q("same", "s1", 25.0, "D", evidence=(10.0, 20.0)),
    ], duration=60.0)
    s2 = BenchItem("s2", [VideoPiece(Path("s2.mp4"))], [q("end", "s2", math.inf, "A", evidence=(0.0, 10.0))],
                   duration=30.0)
    return Benchmark("fake", [s1, s2])


class FakeRunner:
    """Writes one memory per 10 s segment as ingest advances; answers right only from a memory covering the
    evidence. Records every call so the test can check the order of ingest and ask."""

    def __init__(self, name="baseline", adapter_id=None, cheat=False):
        self.name, self.adapter_id, self.cheat = name, adapter_id, cheat
        self.calls: list[tuple] = []
        self.memories: dict[str, list[tuple[float, float, str]]] = {}
        self.reached: dict[str, float] = {}
        self.streams: dict[str, BenchItem] = {}
        self.questions: dict[str, BenchQuestion] = {}

    def ingest_until(self, stream, t):
        self.calls.append(("ingest", stream.key, t))
        self.streams[stream.key] = stream
        for qq in stream.questions:
            self.questions[qq.id] = qq
        end = min(t, stream.duration)
        mems = self.memories.setdefault(stream.key, [])
        while (len(mems) + 1) * SEGMENT <= end + 1e-9:  # only whole segments are written
            i = len(mems)
            mems.append((i * SEGMENT, (i + 1) * SEGMENT, f"segment {i} of {stream.key}"))
        self.reached[stream.key] = end

    def ask(self, question, until):
        self.calls.append(("ask", question.video, question.id, until))
        assert until == question.asked_at
        assert self.reached.get(question.video, -1) >= min(until, self.streams[question.video].duration)
        mems = [m for m in self.memories[question.video] if m[1] <= until]
        if self.cheat:  # a broken retriever that also returns the whole stream's future
            stream = self.streams[question.video]
            mems = [(i * SEGMENT, (i + 1) * SEGMENT, "x") for i in range(int(stream.duration // SEGMENT))]
        seen = any(m[0] <= question.evidence[0] and question.evidence[1] <= m[1] for m in mems)
        choice = question.answer if seen else "E"
        return Answer(choice, choice, abstained=not seen, memory_t_ends=[m[1] for m in mems])

    def stream_stats(self, stream):
        mems = self.memories.get(stream.key, [])
        return StreamStats(memory_bytes=sum(len(m[2].encode()) for m in mems), n_memories=len(mems),
                           n_segments=len(mems), video_seconds=self.reached.get(stream.key, 0.0),
                           write_latencies=[0.5] * len(mems))


def test_fake_runner_satisfies_the_protocol():
    assert isinstance(FakeRunner(), ReplayTarget)


def test_ingests_up_to_each_question_before_asking_it_in_time_order():
    runner = FakeRunner()
    run = replay(bench(), [runner], progress=False)
    assert runner.calls == [
        ("ingest", "s1", 12.0), ("ask", "s1", "early", 12.0),
        ("ingest", "s1", 25.0), ("ask", "s1", "future", 25.0), ("ask", "s1", "same", 25.0),
        ("ingest", "s1", 55.0), ("ask", "s1", "late", 55.0),
        ("ingest", "s2", math.inf), ("ask", "s2", "end", math.inf),
    ]
    got = {o.question_id: (o.answered, o.correct) for o in run.outcomes}
    assert got == {"early": (True, True), "future": (False, False), "same": (True, True), "late": (True, True),
                   "end": (True, True)}
    assert run.stats[("baseline", "s1")].n_memories == 5 and run.stats[("baseline", "s2")].video_seconds == 30.0


def test_answer_from_a_future_memory_is_caught():
    with pytest.raises(FutureMemoryError, match=r"config leaky: question fake/early asked at 12.000s .* 60.000s"):
        replay(bench(), [FakeRunner("leaky", cheat=True)], progress=False)


def test_configs_side_by_side_and_their_json():
    base, adapted = FakeRunner("baseline"), FakeRunner("phase2", adapter_id="ad-7")
    run = replay(bench(), [base, adapted], progress=True, console=Console(file=io.StringIO(), width=100))
    assert run.configs == [("baseline", None), ("phase2", "ad-7")]
    assert len(run.outcomes) == 10
    results = results_json(run, n_boot=100, seed=1)
    assert [(r["config"], r["adapter_id"]) for r in results] == [("baseline", None), ("phase2", "ad-7")]
    r = results[0]
    assert (r["n_questions"], r["n_answered"], r["n_correct"], r["n_streams"]) == (5, 4, 4, 2)
    assert r["acc"] == pytest.approx(0.8) and r["cov"] == pytest.approx(0.8) and r["prec"] == 1.0
    assert r["by_category"]["where"]["n_questions"] == 1 and r["by_category"]["cat"]["acc"] == pytest.approx(0.75)
    # 5 memories on s1 (ingested to its last question, 55 s) and 3 on s2 (30 s), "segment i of sN" = 15 bytes each
    assert r["memory"]["bytes"] == 8 * 15 and r["memory"]["video_seconds"] == 85.0
    assert r["memory"]["bytes_per_min"] == pytest.approx(8 * 15 / (85 / 60))
    assert r["write_latency_s"] == {"n_segments": 8, "mean": 0.5, "p50": 0.5, "p95": 0.5}
    # streams outer, configs inner: both configs saw stream s1 before either saw s2
    assert [c[1] for c in adapted.calls if c[0] == "ingest"] == ["s1", "s1", "s1", "s2"]


def test_open_ended_requires_a_judge_and_runner_names_are_unique():
    item = BenchItem("s", [VideoPiece(Path("s.mp4"))], [q("o", "s", 5.0, "a towel", options=None)], duration=10.0)
    with pytest.raises(ConfigError, match="has open-ended questions, a judge is required"):
        replay(Benchmark("open", [item]), [FakeRunner()], progress=False)
    with pytest.raises(ConfigError, match="name 'baseline' given twice"):
        replay(bench(), [FakeRunner(), FakeRunner()], progress=False)
    with pytest.raises(ConfigError, match="none given"):
        replay(bench(), [], progress=False)


def test_parse_config_spec():
    from edge_agent.eval.replay import ConfigSpec, parse_config_spec

    assert parse_config_spec("baseline") == ConfigSpec("baseline", None)
    assert parse_config_spec("ad-7") == ConfigSpec("ad-7", "ad-7")
    assert parse_config_spec("phase2=ad-7") == ConfigSpec("phase2", "ad-7")
    assert parse_config_spec("base=none") == ConfigSpec("base", None)
    for bad in ("", "=ad-7", "name="):
        with pytest.raises(ConfigError, match="expected 'baseline', an adapter id, or NAME=ADAPTER_ID"):
            parse_config_spec(bad)


def test_benchmark_limit_and_question_checks():
    from edge_agent.errors import QuestionError

    small = bench().limit(max_questions=3)
    assert [it.key for it in small.items] == ["s1"] and [x.id for x in small.questions] == ["early", "future", "same"]
    assert bench().limit(max_streams=1).n_questions == 4
    assert bench().n_questions == 5  # the original is untouched
    with pytest.raises(QuestionError, match="asked_at=-1.0 must be >= 0"):
        q("x", "s", -1.0)
    with pytest.raises(QuestionError, match="3 options, expected 4"):
        q("x", "s", 1.0, options=("a", "b", "c"))
    with pytest.raises(QuestionError, match="answer='E' is not one of A-D"):
        q("x", "s", 1.0, answer="E")
