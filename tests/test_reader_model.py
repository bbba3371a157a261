"""A model folder may ship a text-only reader (reader.gguf) that answers in place of the writer: found by the catalog
code, loaded by `ask`, the demo and eval, named in each stored answer, and refused clearly when broken. It may also
ship a judge (judge.gguf) that judges Phase Two's pairs in place of the reader."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import load_config
from edge_agent.errors import ModelError
from edge_agent.models import JUDGE_FILE, READER_FILE, resolve
from edge_agent.store import Store
from edge_agent.types import ImagePart, Message
from edge_agent.vlm.factory import open_answerer, open_judge, open_reader

from conftest import run_cli
from test_cli import assert_clean_error, seed_memories


def folder_with_reader(tmp_path: Path, tiny_model: Path, reader: bytes | None = None) -> Path:
    d = tmp_path / "withreader"
    d.mkdir()
    for f in ("model.gguf", "mmproj.gguf"):
        shutil.copy2(tiny_model / f, d / f)
    if reader is None:
        shutil.copy2(tiny_model / "model.gguf", d / READER_FILE)
    else:
        (d / READER_FILE).write_bytes(reader)
    return d


def test_resolve_finds_a_reader_only_where_one_ships(tmp_path, tiny_model):
    assert resolve(tiny_model, tmp_path).reader_path is None
    d = folder_with_reader(tmp_path, tiny_model)
    assert resolve(d, tmp_path).reader_path == d / READER_FILE


def test_the_answerer_is_the_reader_text_only(tmp_path, tiny_model):
    d = folder_with_reader(tmp_path, tiny_model)
    cfg = load_config(tmp_path / "home", environ={}, overrides={"model.name": str(d), "model.n_threads": "1"})
    with open_answerer(cfg) as be:
        assert be.model_path == d / READER_FILE and be.model_name == "withreader-reader"
        with pytest.raises(ModelError, match="without its mmproj"):
            be.logits([Message("user", [ImagePart("k", np.zeros((32, 32, 3), np.uint8)), "what is this?"])])
    plain = load_config(tmp_path / "home", environ={}, overrides={"model.name": str(tiny_model), "model.n_threads": "1"})
    assert open_reader(plain) is None
    with open_answerer(plain) as be:
        assert be.model_path == tiny_model / "model.gguf"


def test_the_judge_is_the_judge_file_else_the_reader_else_none(tmp_path, tiny_model):
    def cfg(model):
        return load_config(tmp_path / "home", environ={}, overrides={"model.name": str(model), "model.n_threads": "1"})

    assert open_judge(cfg(tiny_model)) is None  # the writer judges
    d = folder_with_reader(tmp_path, tiny_model)
    assert resolve(d, tmp_path).judge_path is None
    with open_judge(cfg(d)) as be:
        assert be.model_path == d / READER_FILE and be.model_name == "withreader-reader"
    shutil.copy2(tiny_model / "model.gguf", d / JUDGE_FILE)
    assert resolve(d, tmp_path).judge_path == d / JUDGE_FILE
    with open_judge(cfg(d)) as be:
        assert be.model_path == d / JUDGE_FILE and be.model_name == "withreader-judge"
        with pytest.raises(ModelError, match="without its mmproj"):
            be.logits([Message("user", [ImagePart("k", np.zeros((32, 32, 3), np.uint8)), "which is better?"])])
    with open_answerer(cfg(d)) as be:  # answering is still the reader's
        assert be.model_path == d / READER_FILE


def test_doctor_names_the_judge_and_refuses_a_broken_one(tmp_path, tiny_model):
    d = folder_with_reader(tmp_path, tiny_model)
    shutil.copy2(tiny_model / "model.gguf", d / JUDGE_FILE)
    home = tmp_path / "home"
    proc = run_cli(home, "doctor", "--json", model=d)
    model = next(c for c in json.loads(proc.stdout) if c["name"] == "model")
    assert model["ok"] and "answers with reader.gguf, judges with judge.gguf" in model["detail"], model
    (d / JUDGE_FILE).write_bytes(b"not a gguf file at all" * 10)
    proc = run_cli(home, "doctor", "--json", model=d)
    model = next(c for c in json.loads(proc.stdout) if c["name"] == "model")
    assert proc.returncode != 0 and not model["ok"] and "judge.gguf: not a GGUF file" in model["detail"], model


def test_ask_answers_with_the_reader_and_records_it(tmp_path, tiny_model):
    d = folder_with_reader(tmp_path, tiny_model)
    home = tmp_path / "home"
    seed_memories(home)
    proc = run_cli(home, "ask", "Where did I leave the red cup?", "--json", model=d)
    assert proc.returncode == 0, proc.stderr.decode()
    answer = Store.open(home / "memory.db").get_answer(json.loads(proc.stdout)["answer_id"])
    assert answer["model"] == "withreader-reader"


def test_a_broken_reader_is_a_one_line_error_naming_it(tmp_path, tiny_model):
    d = folder_with_reader(tmp_path, tiny_model, reader=b"not a gguf file at all" * 10)
    home = tmp_path / "home"
    seed_memories(home)
    proc = run_cli(home, "ask", "Where did I leave the red cup?", "--json", model=d)
    assert_clean_error(proc, READER_FILE)


def test_eval_answers_with_the_reader_and_the_writer_still_writes(tmp_path, tiny_model):
    d = folder_with_reader(tmp_path, tiny_model)
    home = tmp_path / "home"
    proc = run_cli(home, "eval", "--bench", "synthetic", "--seed", "1", "--minutes", "0.5", "--json", model=d)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)[0]["n_questions"] > 0
    import sqlite3

    db = sqlite3.connect(sorted(home.glob("eval/runs/*/baseline/*.db"))[-1])
    assert {m for (m,) in db.execute("SELECT DISTINCT model FROM answers")} == {"withreader-reader"}
    assert {m for (m,) in db.execute("SELECT DISTINCT writer_model FROM segments")} == {"withreader"}
