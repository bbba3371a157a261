"""Issue 13, items 6 and 7: hostile command lines get one-line errors naming the thing and the value.

Each case was a traceback or a silent acceptance before; each runs `edge-agent` in a subprocess as a wearer
would. None of them needs a model: every check happens before one would load.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

BIG = str(2**70)  # 1180591620717411303424: past SQLite's 64-bit integers


def assert_one_line_error(proc, *needles: str) -> str:
    err = proc.stderr.decode(errors="replace").strip()
    assert proc.returncode != 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _file(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("not a folder\n")
    return p


def _png(p: Path) -> Path:
    import cv2

    cv2.imwrite(str(p), np.full((64, 64, 3), 127, np.uint8))
    return p


# (id, setup(tmp) -> (home, args, env), needles): the ten tracebacks of the issue
TRACEBACKS = [
    ("feedback-2^70", lambda t: (t / "h", ["feedback", BIG, "--correct"], {}), [BIG]),
    ("memories-limit-2^70", lambda t: (t / "h", ["memories", "--limit", BIG], {}), ["--limit", BIG]),
    ("segment_seconds-inf", lambda t: (_cfg(t / "h", "[capture]\nsegment_seconds = inf\n"), ["memories"], {}),
     ["capture.segment_seconds", "inf"]),
    ("reconnect_backoff-inf", lambda t: (t / "h", ["memories"], {"EDGE_AGENT_CAPTURE__RECONNECT_BACKOFF_SECONDS": "inf"}),
     ["capture.reconnect_backoff_seconds", "inf"]),
    ("adapter-export-to-folder", lambda t: (t / "h", ["adapter", "export", "abc", "--out", str(_dir(t / "out"))], {}),
     ["--out", "is a folder"]),
    ("adapter-import-adapters-is-file", lambda t: (_home_with_file(t / "h", "adapters"),
                                                   ["adapter", "import", str(_file(t / "v.gguf"))], {}),
     ["adapters", "not a folder"]),
    ("make-tiny-out-file", lambda t: (t / "h", ["models", "make-tiny", "--out", str(_file(t / "afile"))], {}),
     ["--out", "afile"]),
    ("demo-home-file", lambda t: (_file(t / "homefile"), ["demo"], {}), ["homefile", "not a folder"]),
    ("run-frames-is-file", lambda t: (_home_with_file(t / "h", "frames"), ["run", str(t / "clip.mp4")], {}),
     ["frames", "not a folder"]),
    ("ask-cache-is-file", lambda t: (_home_with_file(t / "h", "cache"), ["ask", "where is the cup?"], {}),
     ["cache", "not a folder"]),
]

# the bad inputs that were accepted silently
SILENT = [
    ("ask-since-after-until", ["ask", "q?", "--since", "100", "--until", "50"], ["--since='100'", "--until='50'"]),
    ("memories-since-after-until", ["memories", "--since", "100", "--until", "50"], ["--since='100'"]),
    ("forget-since-after-until", ["forget", "--since", "100", "--until", "50"], ["--since='100'"]),
    ("memories-since-nan", ["memories", "--since", "nan"], ["--since", "nan"]),
    ("forget-since-nan", ["forget", "--since", "nan"], ["--since", "nan"]),
    ("forget-until-inf", ["forget", "--until", "inf"], ["--until", "inf"]),
    ("duplicate-since", ["memories", "--since", "1", "--since=2"], ["--since", "'1'", "'2'"]),
    ("duplicate-search", ["memories", "--search", "cup", "--search", "keys"], ["--search", "'cup'", "'keys'"]),
    ("correct-and-wrong", ["feedback", "1", "--correct", "--wrong"], ["--correct", "--wrong"]),
    ("run-until-negative", ["run", "x.mp4", "--until", "-5"], ["--until", "-5"]),
    ("forget-all-with-range", ["forget", "--all", "--since", "1h"], ["--all"]),
]


def _cfg(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)
    return home


def _dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _home_with_file(home: Path, name: str) -> Path:
    _file(home / name)
    return home


@pytest.mark.parametrize("setup,needles", [c[1:] for c in TRACEBACKS], ids=[c[0] for c in TRACEBACKS])
def test_former_tracebacks_are_one_line_errors(tmp_path, setup, needles):
    home, args, env = setup(tmp_path)
    assert_one_line_error(run_cli(home, *args, env=env, timeout=120), *needles)


@pytest.mark.parametrize("args,needles", [c[1:] for c in SILENT], ids=[c[0] for c in SILENT])
def test_bad_inputs_are_refused(tmp_path, args, needles):
    assert_one_line_error(run_cli(tmp_path / "h", *args, timeout=120), *needles)


def test_a_value_that_looks_like_an_option_is_a_value(tmp_path):
    # `--answer --wrong` gives the text "--wrong" once: not a duplicate; the answer id is what is missing
    proc = run_cli(tmp_path / "h", "feedback", "1", "--wrong", "--answer", "--wrong", timeout=120)
    assert_one_line_error(proc, "answer 1")


def test_top_k_true_is_not_the_number_one(tmp_path):
    home = _cfg(tmp_path / "h", "[qa]\ntop_k = true\n")
    assert_one_line_error(run_cli(home, "memories", timeout=120), "qa.top_k", "True")


def test_empty_home_variable_is_refused(tmp_path):
    assert_one_line_error(run_cli(tmp_path / "h", "memories", env={"EDGE_AGENT_HOME": ""}, timeout=120),
                          "EDGE_AGENT_HOME")


def test_a_png_is_not_a_one_frame_video(tmp_path):
    png = _png(tmp_path / "still.png")
    assert_one_line_error(run_cli(tmp_path / "h", "run", str(png), timeout=120), "still.png", "PNG")
    disguised = png.rename(tmp_path / "still.mp4")  # the wrong extension does not fool it either
    assert_one_line_error(run_cli(tmp_path / "h", "run", str(disguised), timeout=120), "still.mp4", "still image")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_home_names_the_folder(tmp_path):
    home = _dir(tmp_path / "h")
    home.chmod(0o500)
    try:
        assert_one_line_error(run_cli(home, "memories", timeout=120), str(home), "not writable")
    finally:
        home.chmod(0o700)


def test_unknown_command_and_bad_value_are_one_line(tmp_path):
    assert_one_line_error(run_cli(tmp_path / "h", "remember-everything", timeout=120), "remember-everything")
    assert_one_line_error(run_cli(tmp_path / "h", "memories", "--limit", "many", timeout=120), "--limit")


# -- item 8: a corrupt or truncated model, mmproj or adapter file at start -------------------------------------
def _damaged_model(tiny_model: Path, tmp: Path, name: str, how: str) -> Path:
    import shutil

    folder = tmp / f"model-{name}-{how}"
    folder.mkdir()
    for f in ("model.gguf", "mmproj.gguf"):
        shutil.copy(tiny_model / f, folder / f)
    target = folder / name
    data = target.read_bytes()
    if how == "truncated":
        target.write_bytes(data[: len(data) // 2])
    else:  # corrupt: the header survives, the tensor data does not
        target.write_bytes(data[:64] + os.urandom(len(data) - 64))
    return folder


@pytest.mark.parametrize("name", ["model.gguf", "mmproj.gguf"])
@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_a_damaged_model_file_is_a_one_line_error_at_start(tmp_path, tiny_model, name, how):
    from test_reliability_capture import write_clip

    model = _damaged_model(tiny_model, tmp_path, name, how)
    clip = write_clip(tmp_path / "c.mp4", 2.0)
    proc = run_cli(tmp_path / "h", "run", str(clip), model=model, timeout=300)
    assert_one_line_error(proc, name)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_adapter_file_is_refused_at_import(tmp_path, tiny_model, how):
    from edge_agent.types import SteeringVector
    from edge_agent.vlm.steering import save_control_vector

    path = tmp_path / "steer.gguf"
    import numpy as np

    save_control_vector(SteeringVector(np.ones(64, np.float32), layer=22, scale=1.0), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else os.urandom(len(data)))
    assert_one_line_error(run_cli(tmp_path / "h", "adapter", "import", str(path), model=tiny_model, timeout=300),
                          "steer.gguf")


# -- item 7: Ctrl-C during shutdown ---------------------------------------------------------------------------
def test_ctrl_c_twice_stops_without_a_traceback(tmp_path, tiny_model):
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from conftest import FAST_WRITER_ENV, REPO
    from test_reliability_capture import write_clip

    clip = write_clip(tmp_path / "long.mp4", 60.0)
    for trial, delay in enumerate((0.01, 0.1, 0.3)):  # the second Ctrl-C lands at different points of shutdown
        home = tmp_path / f"h{trial}"
        env = {**os.environ, **FAST_WRITER_ENV, "PYTHONPATH": str(REPO), "EDGE_AGENT_HOME": str(home),
               "EDGE_AGENT_MODEL__NAME": str(tiny_model)}
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", str(clip)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until ingest is under way: a segment committed
            try:
                if sqlite3.connect(home / "memory.db").execute("SELECT COUNT(*) FROM segments").fetchone()[0]:
                    break
            except sqlite3.Error:
                pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        text = err.decode(errors="replace")
        assert "Traceback" not in text and "Exception ignored" not in text, (delay, text)
        db = sqlite3.connect(home / "memory.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_read_only_home_is_named_even_for_root(tmp_path, monkeypatch):
    from edge_agent import cli
    from edge_agent.config import load_config
    from edge_agent.errors import ConfigError

    home = _dir(tmp_path / "h")
    cfg = load_config(home, environ={})
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # what a read-only folder answers a user
    with pytest.raises(ConfigError, match=r"home '.*/h': not writable"):
        cli._check_home(cfg)


def test_export_gives_everything_as_json_and_to_an_owner_only_file(tmp_path):
    import json
    import stat

    from edge_agent.store import Store
    from edge_agent.types import Segment

    home = tmp_path / "h"
    store = Store.open(home / "memory.db")
    sid = store.get_or_create_stream("cam", "fp", 1_700_000_000.0, "camera")
    _, mid = store.commit_segment(sid, Segment(0, 0.0, 10.0), memory="I put the keys in the bowl.", failure=None,
                                  writer_model="t", adapter_id=None, n_tokens=6, latency_s=0.1)
    qid = store.add_question("Where are my keys?", [], 1_700_000_100.0)
    store.add_answer(qid, choice=None, text="in the bowl", abstained=False, cited=[mid], model="t", adapter_id=None)
    store.close()
    proc = run_cli(home, "export", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    dump = json.loads(proc.stdout)
    assert dump["memories"][0]["text"] == "I put the keys in the bowl."
    assert dump["questions"][0]["answers"][0]["citations"] == [mid]
    target = tmp_path / "mine.json"
    proc = run_cli(home, "export", "--out", str(target), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(target.read_text()) | {"exported_at": 0} == dump | {"exported_at": 0}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    text = run_cli(home, "export", timeout=120).stdout.decode()
    assert "I put the keys in the bowl." in text and "Where are my keys?" in text
