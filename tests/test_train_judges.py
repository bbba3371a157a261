"""Judges: the endpoint judge against a fake OpenAI-compatible server on 127.0.0.1 (cache, retries, errors), and
the ground-truth judge grading descriptions against a synthetic clip's event log."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from edge_agent.train.judges import EndpointJudge, GroundTruthJudge, JudgeError, entities, make_judge
from edge_agent.train.config import JudgeSection


class FakeServer:
    """A /v1/chat/completions endpoint answering from a script; counts requests; can fail the first N."""

    def __init__(self, fail_first: int = 0, status: int = 503):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        self.status = status
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if len(server.requests) <= server.fail_first:
                    self.send_response(server.status)
                    self.end_headers()
                    return
                text = body["messages"][-1]["content"][-1]["text"]
                n = text.count("\n")  # "Descriptions:\n0. ...\n1. ..." -> n descriptions
                if "Rank" in body["messages"][0]["content"]:
                    content = json.dumps({"ranking": list(reversed(range(n)))})
                else:
                    lines = text.split("\n")[1:]
                    content = "```json\n" + json.dumps({"verdicts": [
                        {"correct": "cup" in ln, "redundant": False, "overlay": "subtitle" in ln} for ln in lines]}) + "\n```"
                reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


WINDOW = {"window_id": "clip/3", "prior_memories": ["I walked into the kitchen."],
          "images": [np.full((32, 32, 3), 200, np.uint8), np.zeros((32, 32, 3), np.uint8)], "n_new_frames": 1}


def judge_for(server, tmp_path, **kw):
    return EndpointJudge(server.url, "fake-4o", api_key="sk-test", cache_dir=tmp_path / "cache",
                         requests_per_minute=0, backoff_seconds=0.01, **kw)


def test_endpoint_judge_cache_avoids_a_second_call(tmp_path):
    with FakeServer() as server:
        judge = judge_for(server, tmp_path)
        first = judge.assess(WINDOW, ["I moved the cup.", "I read a subtitle."])
        assert [v.correct for v in first] == [True, False]
        assert [v.overlay for v in first] == [False, True]
        assert len(server.requests) == 1
        again = judge.assess(WINDOW, ["I moved the cup.", "I read a subtitle."])
        assert again == first
        assert len(server.requests) == 1 and judge.cache_hits == 1
        # a new judge on the same cache folder (a re-run) does not ask either
        assert judge_for(server, tmp_path).assess(WINDOW, ["I moved the cup.", "I read a subtitle."]) == first
        assert len(server.requests) == 1
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "fake-4o" and req["body"]["temperature"] == 0
    images = [p for p in req["body"]["messages"][1]["content"] if p["type"] == "image_url"]
    assert len(images) == 1 and images[0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_endpoint_judge_rank(tmp_path):
    with FakeServer() as server:
        assert judge_for(server, tmp_path).rank(WINDOW, ["a cup", "a red cup", "the cup"]) == [2, 1, 0]


def test_endpoint_judge_retries_server_errors(tmp_path):
    with FakeServer(fail_first=2, status=503) as server:
        judge = judge_for(server, tmp_path, max_retries=3)
        assert judge.assess(WINDOW, ["a cup"])[0].correct
        assert len(server.requests) == 3


def test_endpoint_judge_gives_up_with_a_clear_error(tmp_path):
    with FakeServer(fail_first=99, status=500) as server:
        judge = judge_for(server, tmp_path, max_retries=1)
        with pytest.raises(JudgeError, match=r"HTTP 500 after 2 attempt"):
            judge.assess(WINDOW, ["a cup"])
    with FakeServer(fail_first=99, status=401) as server:  # a client error is not retried
        judge = judge_for(server, tmp_path, max_retries=3)
        with pytest.raises(JudgeError, match="HTTP 401 after 1 attempt"):
            judge.assess(WINDOW, ["a cup"])
        assert len(server.requests) == 1


def test_endpoint_judge_rate_limit(tmp_path):
    import time

    with FakeServer() as server:
        judge = EndpointJudge(server.url, "m", cache_dir=tmp_path / "c", requests_per_minute=600)  # 0.1 s apart
        start = time.monotonic()
        for d in ("a cup", "b cup", "c cup"):
            judge.assess(WINDOW, [d])
        assert time.monotonic() - start >= 0.2
        assert len(server.requests) == 3


def test_make_judge(tmp_path):
    assert isinstance(make_judge(JudgeSection(), tmp_path), GroundTruthJudge)
    j = make_judge(JudgeSection(kind="openai", base_url="http://127.0.0.1:9/v1", api_key_env=""), tmp_path)
    assert isinstance(j, EndpointJudge) and j.api_key is None


# --- ground truth ----------------------------------------------------------------------------------------------

def test_entities_prefer_longer_names():
    assert entities("I put the red cup on the coffee table in the living room.") == {
        "thing:red cup", "place:coffee table", "room:living room"}
    assert entities("I met <face_2>; the note said MILK.") == {"person:<face_2>", "word:milk"}
    assert entities("Nothing of the world here.") == set()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from edge_agent.synth import generate

    paths = generate(3, 1.0, tmp_path_factory.mktemp("clip"))
    return json.loads(paths.events.read_text())


def _window(events_log, index, prior=()):
    seg = events_log["segments"][index]
    a, b = seg["t_start"], seg["t_end"]
    evs = [e for e in events_log["events"] if a <= e["t"] < b or e["t"] < a < e["t_end"]]
    return {"window_id": f"c/{index}", "caption": seg["caption"], "events": json.dumps(evs),
            "prior_memories": list(prior)}


def test_ground_truth_judge_grades_against_the_event_log(clip):
    judge = GroundTruthJudge()
    checked = 0
    for i, seg in enumerate(clip["segments"]):
        w = _window(clip, i)
        truth_caption = seg["caption"]
        # the caption itself is correct; the same sentence with another room is wrong
        rooms = [r for r in clip["world"]["rooms"] if r not in truth_caption]
        named_rooms = [r for r in clip["world"]["rooms"] if f"the {r}" in truth_caption]
        verdicts = judge.assess(w, [truth_caption])
        assert verdicts[0].correct, truth_caption
        if named_rooms and rooms:
            wrong = truth_caption.replace(f"the {named_rooms[0]}", f"the {rooms[0]}")
            assert not judge.assess(w, [wrong])[0].correct, wrong
            checked += 1
    assert checked >= 2
    w = _window(clip, 0)
    assert not judge.assess(w, ["It was a nice day."])[0].correct  # names nothing of the world


def test_ground_truth_judge_rules_and_rank(clip):
    judge = GroundTruthJudge()
    seg = clip["segments"][1]
    w = _window(clip, 1, prior=[seg["caption"]])
    v = judge.assess(w, [seg["caption"], seg["caption"] + " The subtitle said hello."])
    assert v[0].redundant  # the same sentence was already written
    assert v[1].overlay
    truth = seg["caption"]
    short = truth.split(" in the ")[0] + "."
    order = judge.rank(_window(clip, 1), [short, truth])
    if entities(truth) != entities(short):
        assert order == [1, 0]
