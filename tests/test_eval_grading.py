"""Grading: letters, judges (local backend, OpenAI-compatible over a local HTTP server) and the on-disk judge cache."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from edge_agent.errors import ConfigError
from edge_agent.eval.grading import (VERDICT_SCHEMA, BackendJudge, CachedJudge, JudgeError, OpenAIJudge, grade,
                                     judge_prompt, parse_verdict)
from edge_agent.eval.schema import Answer, BenchQuestion
from edge_agent.types import Generation

MC = BenchQuestion("q1", "synthetic", "synthetic/s", 10.0, "What colour?", ("red", "green", "blue", "grey"), "B",
                   "colour")
OPEN = BenchQuestion("q2", "egotempo", "egotempo/c", 5.0, "What does the person pick up?", None,
                     "The oil remover spray.", "object-specific action")


def test_multiple_choice_by_letter_with_e_as_abstention():
    assert grade(MC, Answer("B", "B", False)) == (True, True)
    assert grade(MC, Answer("b", "b", False)) == (True, True)
    assert grade(MC, Answer("C", "C", False)) == (True, False)
    assert grade(MC, Answer("E", "not in memory", False)) == (False, False)
    assert grade(MC, Answer(None, "", False)) == (False, False)
    assert grade(MC, Answer("B", "B", abstained=True)) == (False, False)


class ListJudge:
    judge_id = "list"

    def __init__(self, verdict: bool):
        self.verdict, self.seen = verdict, []

    def judge(self, question, reference, candidate):
        self.seen.append((question, reference, candidate))
        return self.verdict


def test_open_ended_needs_a_judge_and_abstentions_are_not_judged():
    with pytest.raises(ConfigError, match="egotempo/q2 is open-ended: a judge is required"):
        grade(OPEN, Answer(None, "a spray", False))
    j = ListJudge(True)
    assert grade(OPEN, Answer(None, "a spray bottle", False), j) == (True, True)
    assert j.seen == [(OPEN.question, OPEN.answer, "a spray bottle")]
    assert grade(OPEN, Answer(None, "not in memory", abstained=True), j) == (False, False)
    assert grade(OPEN, Answer(None, "   ", False), j) == (False, False)
    assert len(j.seen) == 1
    assert grade(OPEN, Answer(None, "a towel", False), ListJudge(False)) == (True, False)


def test_parse_verdict():
    assert parse_verdict('{"correct": true}', "j") is True
    assert parse_verdict('```json\n{"correct": false}\n```', "j") is False
    for bad in ('{"correct": "yes"}', "true", "{}", "not json"):
        with pytest.raises(JudgeError, match="judge j: reply"):
            parse_verdict(bad, "j")


class FakeBackend:
    """Just enough of the Backend protocol for a judge: records what it was asked."""

    model_name, model_hash, hidden_size, n_layers = "tiny", "abc123", 64, 2

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def generate(self, messages, sampling, json_schema=None):
        self.calls.append((messages, sampling, json_schema))
        return Generation(self.replies.pop(0), 10, 3)

    def count_tokens(self, text):
        return len(text.split())

    def set_steering(self, vector):
        pass

    def close(self):
        pass


def test_backend_judge_uses_the_schema_and_the_shared_prompt():
    backend = FakeBackend(['{"correct": true}', '{"correct": false}'])
    judge = BackendJudge(backend)
    assert judge.judge_id == "local:tiny:abc123"
    assert judge.judge("Q?", "ref", "cand") is True
    assert judge.judge("Q?", "ref", "other") is False
    messages, sampling, schema = backend.calls[0]
    assert schema == VERDICT_SCHEMA and sampling.temperature == 0.0
    assert messages[-1].role == "user" and messages[-1].parts == [judge_prompt("Q?", "ref", "cand")]
    assert "Reference answer: ref" in messages[-1].parts[0] and "Candidate answer: cand" in messages[-1].parts[0]


# ------------------------------------------------------------------------------------------------ HTTP judge

class FakeOpenAI:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1, serving requests from a thread that stops itself
    after `deadline` seconds or when the test ends. Says "correct" when the candidate mentions "spray"."""

    def __init__(self, statuses=(), deadline: float = 20.0):
        self.requests: list[dict] = []
        self.statuses = list(statuses)  # HTTP statuses to answer first (then 200s)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if outer.statuses:
                    self.send_response(outer.statuses.pop(0))
                    self.end_headers()
                    return
                prompt = body["messages"][-1]["content"]
                candidate = prompt.split("Candidate answer:")[1].split("\n")[0]
                content = json.dumps({"correct": "spray" in candidate})
                data = json.dumps({"id": "x", "object": "chat.completion",
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                                "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 0.05
        self.stop = threading.Event()
        end = time.monotonic() + deadline

        def serve():
            while not self.stop.is_set() and time.monotonic() < end:
                self.server.handle_request()
            self.server.server_close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_openai():
    servers = []

    def make(**kw):
        servers.append(FakeOpenAI(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_openai_judge_talks_json_mode_with_the_key_from_env(fake_openai, monkeypatch):
    server = fake_openai()
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", "sk-test")
    judge = OpenAIJudge(server.base_url, "gemini-judge", api_key_env="JUDGE_KEY_FOR_TEST", timeout=5)
    assert judge.judge(OPEN.question, OPEN.answer, "the spray can") is True
    assert judge.judge(OPEN.question, OPEN.answer, "a towel") is False
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "gemini-judge" and req["body"]["temperature"] == 0
    assert req["body"]["response_format"] == {"type": "json_object"}
    assert req["body"]["messages"][-1]["content"] == judge_prompt(OPEN.question, OPEN.answer, "the spray can")


def test_openai_judge_errors(fake_openai, monkeypatch):
    monkeypatch.delenv("JUDGE_KEY_ABSENT", raising=False)
    server = fake_openai(statuses=[503, 400])
    with pytest.raises(ConfigError, match="environment variable JUDGE_KEY_ABSENT is not set"):
        OpenAIJudge(server.base_url, "m", api_key_env="JUDGE_KEY_ABSENT").judge("q", "r", "c")
    judge = OpenAIJudge(server.base_url, "m", api_key_env=None, timeout=5, retries=2, backoff=0.0)
    with pytest.raises(JudgeError, match="HTTP 400"):  # 503 is retried, 400 is not
        judge.judge("q", "r", "spray")
    assert len(server.requests) == 2 and server.requests[0]["auth"] is None
    assert judge.judge("q", "r", "spray") is True
    with pytest.raises(ConfigError, match="expected an http"):
        OpenAIJudge("localhost:8000", "m")


def test_cache_makes_a_rerun_cost_nothing(fake_openai, tmp_path):
    server = fake_openai()
    path = tmp_path / "cache" / "judge.sqlite"
    answers = ["the spray", "a towel", "spray bottle"]
    with CachedJudge(OpenAIJudge(server.base_url, "m", api_key_env=None, timeout=5), path) as judge:
        first = [judge.judge(OPEN.question, OPEN.answer, a) for a in answers]
        assert judge.judge(OPEN.question, OPEN.answer, "the spray") is True  # same prompt within the run
        assert (judge.calls, judge.hits) == (3, 1)
    assert first == [True, False, True] and len(server.requests) == 3

    with CachedJudge(OpenAIJudge(server.base_url, "m", api_key_env=None, timeout=5), path) as again:
        assert [again.judge(OPEN.question, OPEN.answer, a) for a in answers] == first
        assert again.calls == 0 and again.hits == 3
    assert len(server.requests) == 3  # the second run made zero calls

    # another judge model does not reuse these verdicts
    with CachedJudge(OpenAIJudge(server.base_url, "other", api_key_env=None, timeout=5), path) as other:
        other.judge(OPEN.question, OPEN.answer, "the spray")
        assert other.calls == 1
