"""The command line as a user meets it: real subprocesses, the tiny model, clear one-line errors, --json."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from edge_agent.store import Store
from edge_agent.types import Segment

from conftest import run_cli



def cli(home: Path, *args: str | bytes, model: Path | None = None, timeout: float = 300):
    return run_cli(home, *args, model=model, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, one line on stderr naming the problem, no traceback, nothing on stdout."""
    err = proc.stderr.decode(errors="replace").strip()
    assert proc.returncode != 0, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip")
    proc = cli(out / "home", "synth", "--seed", "3", "--minutes", "0.5", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    paths = json.loads(proc.stdout)
    assert Path(paths["video"]).stat().st_size > 10_000
    assert json.loads(Path(paths["questions"]).read_text())["questions"]
    return Path(paths["video"])


def test_run_on_the_tiny_model_records_every_segment(tmp_path, clip, tiny_model):
    home = tmp_path / "home"
    proc = cli(home, "run", str(clip), "--json", model=tiny_model)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    # 30 s of video: three segments, each either written or recorded as unwritten with its reason
    assert report["segments_written"] + report["segments_failed"] == 3
    store = Store.open(home / "memory.db")
    segs = store.segments(report["stream_id"])
    assert [s["idx"] for s in segs] == [0, 1, 2]
    assert all(s["status"] == "written" or s["failure"] for s in segs)
    # running the same file again resumes: nothing new
    again = json.loads(cli(home, "run", str(clip), "--json", model=tiny_model).stdout)
    assert again["segments_skipped"] == 0 and again["segments_written"] + again["segments_failed"] == 0


def seed_memories(home: Path) -> list[int]:
    store = Store.open(home / "memory.db")
    sid = store.get_or_create_stream("test", "fp-test", 0.0, "file")
    texts = ["I put the red cup on the shelf in the kitchen.", "I met <face_1> at the door.",
             "I read the sign 'EXIT' near the desk."]
    ids = []
    for i, text in enumerate(texts):
        _, mid = store.commit_segment(sid, Segment(i, 10.0 * i, 10.0 * i + 10), memory=text, failure=None,
                                      writer_model="test", adapter_id=None, n_tokens=10, latency_s=0.1)
        ids.append(mid)
    return ids


def test_ask_answers_from_stored_memories_and_feedback_is_traced(tmp_path, tiny_model):
    home = tmp_path / "home"
    ids = seed_memories(home)
    proc = cli(home, "ask", "Where did I leave the red cup?", "-o", "A. on the shelf", "-o", "B. in the sink",
               "-o", "C. on the desk", "-o", "D. on the bed", "--json", model=tiny_model)
    assert proc.returncode == 0, proc.stderr.decode()
    res = json.loads(proc.stdout)
    assert res["choice"] in list("ABCDE")
    assert res["abstained"] == (res["choice"] == "E")
    assert set(res["shown"]) <= set(ids) and ids[0] in res["shown"]
    assert all(c["id"] in ids for c in res["citations"])
    fb = cli(home, "feedback", str(res["answer_id"]), "--wrong", "--answer", "on the shelf", "--json")
    assert fb.returncode == 0, fb.stderr.decode()
    stored = Store.open(home / "memory.db").get_answer(res["answer_id"])
    assert stored["feedback"][0]["correct"] is False and stored["feedback"][0]["corrected"] == "on the shelf"
    taken_back = cli(home, "feedback", str(res["answer_id"]), "--delete", "--json")
    assert json.loads(taken_back.stdout)["feedback"] == 1
    assert Store.open(home / "memory.db").get_answer(res["answer_id"])["feedback"] == []


def test_a_question_asked_until_a_time_is_asked_as_of_it_and_gets_the_same_answer(tmp_path, tiny_model):
    """The answerer's prompt says when it is asked: with --until that is the --until time, not the wall clock, so
    the same question over the same memories is the same prompt however much later it is asked again."""
    home = tmp_path / "home"
    seed_memories(home)
    args = ["ask", "Where did I leave the red cup?", "-o", "A. on the shelf", "-o", "B. in the sink", "--until", "25",
            "--json"]
    first, again = (json.loads(cli(home, *args, model=tiny_model).stdout) for _ in range(2))
    store = Store.open(home / "memory.db")
    asked = [store.get_answer(r["answer_id"]) for r in (first, again)]
    assert [a["asked_at"] for a in asked] == [25.0, 25.0]
    assert {k: first[k] for k in ("choice", "text", "shown")} == {k: again[k] for k in ("choice", "text", "shown")}
    now = json.loads(cli(home, "ask", "Where did I leave the red cup?", "--json", model=tiny_model).stdout)
    assert store.get_answer(now["answer_id"])["asked_at"] > 1e9  # no --until: asked now


def test_memories_search_and_forget(tmp_path):
    home = tmp_path / "home"
    seed_memories(home)
    rows = json.loads(cli(home, "memories", "--search", "cup", "--json").stdout)
    assert [r["text"] for r in rows] == ["I put the red cup on the shelf in the kitchen."]
    all_rows = json.loads(cli(home, "memories", "--until", "20", "--json").stdout)
    assert len(all_rows) == 2
    counts = json.loads(cli(home, "forget", "--since", "15", "--json").stdout)
    assert counts["memories"] == 2
    assert len(json.loads(cli(home, "memories", "--json").stdout)) == 1


@pytest.mark.parametrize("question", ['what "is" AND OR NOT * ( near:cup )', "cup' OR 1=1; --", "NEAR(red cup, 2)"])
def test_fts_operators_and_quotes_in_a_question_are_just_words(tmp_path, tiny_model, question):
    home = tmp_path / "home"
    seed_memories(home)
    proc = cli(home, "ask", question, "--json", model=tiny_model)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "answer_id" in json.loads(proc.stdout)


def test_non_utf8_question_is_stored_not_crashed(tmp_path, tiny_model):
    home = tmp_path / "home"
    seed_memories(home)
    proc = cli(home, "ask", b"where is the \xff\xfe cup?", "--json", model=tiny_model)
    assert proc.returncode == 0, proc.stderr.decode()
    qid = json.loads(proc.stdout)["question_id"]
    assert qid >= 1


def test_bad_sources_give_one_line_errors(tmp_path):
    home = tmp_path / "home"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(5000))
    cases = [
        (str(tmp_path / "missing.mp4"), "missing.mp4"),
        (str(empty), "empty.mp4"),
        (str(junk), "junk.mp4"),
        ("rtsp://127.0.0.1:1/stream", "127.0.0.1:1"),
        ("ftp://example/x", "ftp://"),
    ]
    for spec, needle in cases:
        assert_clean_error(cli(home, "run", spec, model=tmp_path), needle)


def test_truncated_video_keeps_what_decodes(tmp_path, clip, tiny_model):
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    proc = cli(tmp_path / "home", "run", str(cut), "--json", model=tiny_model)
    # mp4 with its index at the end is unreadable when cut; either a clean error or what decoded, never a traceback
    if proc.returncode != 0:
        assert_clean_error(proc, "cut.mp4")
    else:
        assert json.loads(proc.stdout)["stream_seconds"] > 0


def test_user_mistakes_are_one_line_errors(tmp_path, tiny_model):
    home = tmp_path / "home"
    seed_memories(home)
    assert_clean_error(cli(home, "ask", "   ", model=tiny_model), "question")
    assert_clean_error(cli(home, "ask", "x?", *sum((["-o", f"{c}. x"] for c in "ABCDE"), []), model=tiny_model),
                       "option")
    assert_clean_error(cli(home, "feedback", "999", "--correct"), "999")
    assert_clean_error(cli(home, "feedback", "1"), "--correct")
    assert_clean_error(cli(home, "memories", "--since", "yesterday-ish"), "--since")
    assert_clean_error(cli(home, "forget"), "--all")
    assert_clean_error(cli(home, "ask", "where?", model=tmp_path / "no-model"), "no-model")
    bad_cfg = home / "config.toml"
    bad_cfg.write_text("[writer]\nwindow_segments = 0\n")
    assert_clean_error(cli(home, "memories"), "writer.window_segments=0")
    env_bad = cli(home, "memories")
    assert env_bad.returncode == 2
