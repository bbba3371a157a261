"""inspect_gguf / check_model_pair: identity of exported files, and one-line errors for files llama.cpp must not see."""

from __future__ import annotations

import shutil

import gguf
import numpy as np
import pytest

from edge_agent.errors import ModelError
from edge_agent.vlm.gguf_info import check_model_pair, inspect_gguf


def _write_llama_gguf(path, hidden=32):
    """A small but well-formed GGUF of another architecture (llama)."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_embedding_length(hidden)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tensor("token_embd.weight", np.zeros((16, hidden), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_identity_of_tiny_model(tiny_model):
    info = inspect_gguf(tiny_model / "model.gguf")
    assert info["architecture"] == "qwen3vl" and info["type"] == "model"
    assert (info["hidden_size"], info["n_layers"], info["file_type"], info["file_type_name"]) == (64, 24, 0, "F32")
    assert len(info["base_model_hash"]) == 64 and info["n_tensors"] == 24 * 11 + 3
    assert info["size_bytes"] == (tiny_model / "model.gguf").stat().st_size
    model, mmproj = check_model_pair(tiny_model / "model.gguf", tiny_model / "mmproj.gguf")
    assert mmproj["projector_type"] == "qwen3vl_merger" and mmproj["projection_dim"] == model["hidden_size"]


@pytest.mark.parametrize("keep", [0.0005, 0.01, 0.5, 0.999])
def test_truncated_file(tiny_model, tmp_path, keep):
    data = (tiny_model / "model.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: max(8, int(len(data) * keep))])
    with pytest.raises(ModelError, match=r"cut\.gguf: (corrupt or truncated|truncated) GGUF") as e:
        inspect_gguf(cut)
    assert "\n" not in str(e.value)


def test_not_a_gguf_and_missing(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ModelError, match=r"x\.gguf: not a GGUF file"):
        inspect_gguf(tmp_path / "x.gguf")
    with pytest.raises(ModelError, match=r"nope\.gguf: no such file"):
        inspect_gguf(tmp_path / "nope.gguf")


def test_wrong_architecture(tiny_model, tmp_path):
    other = _write_llama_gguf(tmp_path / "llama.gguf")
    assert inspect_gguf(other)["architecture"] == "llama"  # readable without expectations
    with pytest.raises(ModelError, match=r"llama\.gguf: architecture 'llama', expected a Qwen3-VL text model"):
        inspect_gguf(other, expect="qwen3vl")
    with pytest.raises(ModelError, match="expected a Qwen3-VL mmproj"):
        inspect_gguf(other, expect="mmproj")
    with pytest.raises(ModelError, match=r"mmproj\.gguf: an mmproj"):
        inspect_gguf(tiny_model / "mmproj.gguf", expect="qwen3vl")
    with pytest.raises(ModelError, match="expected a Qwen3-VL mmproj"):
        inspect_gguf(tiny_model / "model.gguf", expect="mmproj")


def test_model_pair_errors(tiny_model, tmp_path):
    with pytest.raises(ModelError, match="mmproj file not found"):
        check_model_pair(tiny_model / "model.gguf", tmp_path / "mmproj.gguf")
    with pytest.raises(ModelError, match="no mmproj given"):
        check_model_pair(tiny_model / "model.gguf", None)
    with pytest.raises(ModelError, match="expected a Qwen3-VL mmproj"):
        check_model_pair(tiny_model / "model.gguf", tiny_model / "model.gguf")
    with pytest.raises(ModelError, match="expected a Qwen3-VL text model"):
        check_model_pair(_write_llama_gguf(tmp_path / "llama.gguf"), tiny_model / "mmproj.gguf")


def test_model_pair_from_different_checkpoints(tiny_model, tmp_path):
    """Same shapes, another checkpoint: the base-model hashes differ, so the pair is refused."""
    from edge_agent.export import export_hf

    hf = shutil.copytree(tiny_model / "hf", tmp_path / "hf2")
    data = bytearray((hf / "model.safetensors").read_bytes())
    data[-4:] = b"\x00\x00\x80\x3f"  # last float of the last tensor -> 1.0: a different checkpoint
    (hf / "model.safetensors").write_bytes(bytes(data))
    _, other_mmproj = export_hf(hf, tmp_path / "out", "f32")
    with pytest.raises(ModelError, match="different checkpoint"):
        check_model_pair(tiny_model / "model.gguf", other_mmproj)
