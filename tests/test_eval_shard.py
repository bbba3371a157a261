"""Sharded evaluation gives the serial run's numbers; an OpenAI-compatible answerer answers when named."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from edge_agent.config import load_config
from edge_agent.eval import load_synthetic
from edge_agent.eval.metrics import Outcome
from edge_agent.eval.replay import ReplayRun, parse_config_spec
from edge_agent.eval.report import results_json
from edge_agent.eval.schema import Benchmark
from edge_agent.eval.shard import merge_runs, split_streams
from edge_agent.synth import generate


def two_stream_benchmark(tmp_path) -> Benchmark:
    items = []
    for seed in (1, 2):
        generate(seed=seed, minutes=1, out_dir=tmp_path / f"clip{seed}")
        b = load_synthetic(tmp_path / f"clip{seed}")
        items += b.items
    return Benchmark(b.name, items)


def test_split_and_merge_restore_the_serial_order(tmp_path):
    bench = two_stream_benchmark(tmp_path)
    keys = [i.key for i in bench.items]
    assert len(set(keys)) == 2
    shards = split_streams(bench, 2)
    assert [[i.key for i in s.items] for s in shards] == [[keys[0]], [keys[1]]]
    assert len(split_streams(bench, 5)) == 2  # no empty shards

    def run_of(items):
        run = ReplayRun(bench.name, [("baseline", None), ("b", "x")])
        for item in items:
            for name in ("baseline", "b"):
                run.outcomes += [Outcome(q.id, bench.name, name, q.category, True, i % 2 == 0, item.key, q.asked_at,
                                         q.answer, "A", None) for i, q in enumerate(item.questions)]
        return run

    serial = run_of(bench.items)
    merged = merge_runs(bench, [run_of(s.items) for s in reversed(shards)])  # any order of arrival
    assert [(o.stream, o.config, o.question_id) for o in merged.outcomes] == \
        [(o.stream, o.config, o.question_id) for o in serial.outcomes]


@pytest.mark.slow
def test_two_ray_workers_give_the_serial_numbers(tmp_path, tiny_model):
    pytest.importorskip("ray")
    from edge_agent.eval.target import replay_with_runtime
    from edge_agent.eval.shard import replay_sharded

    bench = two_stream_benchmark(tmp_path)
    cfg = load_config(tmp_path / "home", environ={"EDGE_AGENT_MODEL__NAME": str(tiny_model),
                                                  "EDGE_AGENT_MODEL__N_THREADS": "1",
                                                  "EDGE_AGENT_QA__USE_EMBEDDINGS": "false",
                                                  "EDGE_AGENT_WRITER__CANDIDATE_SHARE": "0"})
    specs = [parse_config_spec("baseline")]
    serial = replay_with_runtime(cfg, bench, specs, tmp_path / "serial")
    sharded = replay_sharded(cfg, bench, specs, tmp_path / "sharded", workers=2)

    def numbers(run):
        out = results_json(run, seed=0)
        for r in out:
            r.pop("replay_seconds")
            r.pop("write_latency_s")
        return out

    assert [(o.stream, o.question_id, o.given) for o in sharded.outcomes] == \
        [(o.stream, o.question_id, o.given) for o in serial.outcomes]
    assert numbers(sharded) == numbers(serial)
    assert serial.outcomes and len({o.stream for o in serial.outcomes}) == 2


class _FakeChat(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeChat.seen.append(body)
        reply = {"choices": [{"message": {"content": json.dumps({"answer": "C", "citations": []})}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_remote_answerer_answers_from_the_memories_it_is_sent(tmp_path):
    from edge_agent.eval.remote import OpenAIAnswerer
    from edge_agent.qa.answer import answer
    from edge_agent.store import Store
    from edge_agent.types import Segment

    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = Store.open(tmp_path / "m.db")
        sid = store.get_or_create_stream("clip", "fp", 0.0, "file")
        store.commit_segment(sid, Segment(0, 0.0, 10.0), memory="I put the red cup on the shelf.", failure=None,
                             writer_model="t", adapter_id=None, n_tokens=8, latency_s=0.1)
        remote = OpenAIAnswerer(f"http://127.0.0.1:{server.server_port}/v1", "gpt-4o", None)
        res = answer(store, remote, "Where is the red cup?", ["A. sink", "B. desk", "C. shelf", "D. bed"],
                     asked_at=20.0, embedder=None)
    finally:
        server.shutdown()
    assert res["choice"] == "C"
    sent = _FakeChat.seen[-1]
    assert sent["model"] == "gpt-4o" and "red cup on the shelf" in json.dumps(sent["messages"])
