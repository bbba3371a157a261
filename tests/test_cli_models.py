"""Issue 2 from the command line: make-tiny, then a generation with frames and a steering vector; bad adapters."""

import json

import numpy as np

from edge_agent.store import Store
from edge_agent.types import SteeringVector
from edge_agent.vlm import steering
from edge_agent.vlm.gguf_info import inspect_gguf

from conftest import run_cli


def test_make_tiny_then_run_with_an_imported_control_vector(tmp_path):
    home, model = tmp_path / "home", tmp_path / "tiny"
    proc = run_cli(home, "models", "make-tiny", "--out", str(model), "--seed", "1")
    assert proc.returncode == 0, proc.stderr.decode()
    info = inspect_gguf(model / "model.gguf")
    assert info["architecture"] == "qwen3vl" and info["n_layers"] >= 24 and (model / "mmproj.gguf").is_file()

    # a stock llama.cpp control vector (no base-model hash inside): bound to the model on import
    vec = SteeringVector(np.random.default_rng(0).normal(size=info["hidden_size"]).astype(np.float32), layer=22)
    cv = steering.save_control_vector(vec, tmp_path / "steer.gguf")
    proc = run_cli(home, "adapter", "import", str(cv), "--activate", "--json", model=model)
    assert proc.returncode == 0, proc.stderr.decode()
    row = json.loads(proc.stdout)
    assert row["status"] == "active" and row["base_model_hash"] == info["base_model_hash"]

    synth = run_cli(home, "synth", "--seed", "6", "--minutes", "0.5", "--out", str(tmp_path / "clip"), "--json")
    video = json.loads(synth.stdout)["video"]
    proc = run_cli(home, "run", video, "--json", model=model)
    assert proc.returncode == 0, proc.stderr.decode()
    segments = Store.open(home / "memory.db").segments(json.loads(proc.stdout)["stream_id"])
    # every segment's frames went through the vision tower with the vector applied at layer 22
    assert len(segments) == 3 and all(s["adapter_id"] == row["id"] and s["n_keyframes"] > 0 for s in segments)


def test_adapters_that_do_not_fit_are_refused(tmp_path, tiny_model):
    home = tmp_path / "home"
    hidden = inspect_gguf(tiny_model / "model.gguf")["hidden_size"]
    wrong_size = steering.save_safetensors(SteeringVector(np.ones(hidden + 1, np.float32), 22, 1.0, "x"),
                                           tmp_path / "size.safetensors")
    proc = run_cli(home, "adapter", "import", str(wrong_size), model=tiny_model)
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr
    assert str(hidden + 1).encode() in proc.stderr and str(hidden).encode() in proc.stderr

    other = steering.save_safetensors(SteeringVector(np.ones(hidden, np.float32), 22, 1.0, "another-model"),
                                      tmp_path / "other.safetensors")
    proc = run_cli(home, "adapter", "import", str(other), model=tiny_model)
    assert proc.returncode != 0 and b"another-model" in proc.stderr and b"Traceback" not in proc.stderr

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(40))
    proc = run_cli(home, "adapter", "import", str(junk), model=tiny_model)
    assert proc.returncode != 0 and b"junk.gguf" in proc.stderr and b"Traceback" not in proc.stderr
    assert Store.open(home / "memory.db").adapters() == []
