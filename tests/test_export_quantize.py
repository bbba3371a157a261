"""Smaller files still work: f16/q8_0 exports and llama.cpp K-quants load, generate, and stay close to f32."""

from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from export_support import greedy_tokens, llama_image_logits, llama_logits, test_image  # noqa: E402

from edge_agent.errors import ConfigError, ModelError  # noqa: E402
from edge_agent.export import export_hf, load_imatrix, quantize  # noqa: E402
from edge_agent.vlm.gguf_info import inspect_gguf  # noqa: E402

PROMPT = "I put the red cup on the shelf in the kitchen. Where is the cup?"


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two logit arrays: how much of the f32 model's output a quantized one keeps."""
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def prompt_ids(tiny_model):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_model / "hf" / "tokenizer.json")).encode(PROMPT).ids


@pytest.fixture(scope="module")
def f32_logits(tiny_model, prompt_ids):
    return llama_logits(tiny_model / "model.gguf", prompt_ids)


@pytest.fixture(scope="module")
def q4(tiny_model, tmp_path_factory):
    return quantize(tiny_model / "model.gguf", tmp_path_factory.mktemp("q4") / "model-Q4_K_M.gguf", "Q4_K_M")


@pytest.mark.parametrize("outtype,tol", [("f16", 5e-3), ("q8_0", 3e-2)])
def test_exported_types_load_generate_and_see(tiny_model, tmp_path, prompt_ids, f32_logits, outtype, tol):
    model_path, mmproj_path = export_hf(tiny_model / "hf", tmp_path, outtype)
    got = llama_logits(model_path, prompt_ids)
    assert np.abs(got - f32_logits).max() < tol
    tokens = greedy_tokens(model_path, PROMPT, 5)
    assert len(tokens) == 5 and all(0 <= t < 1024 for t in tokens)
    # the vision tower in the same precision still encodes an image close to the f32 one
    image = test_image(128, 128)
    want, n = llama_image_logits(tiny_model / "model.gguf", tiny_model / "mmproj.gguf", image, "I see", " a cup")
    got, n2 = llama_image_logits(model_path, mmproj_path, image, "I see", " a cup")
    assert n == n2 == 16
    assert np.abs(got - want).max() < tol


def test_q4_k_m_loads_generates_and_keeps_identity(tiny_model, q4, prompt_ids, f32_logits):
    info, src = inspect_gguf(q4, expect="qwen3vl"), inspect_gguf(tiny_model / "model.gguf")
    assert info["file_type_name"] == "Q4_K_M"
    assert info["base_model_hash"] == src["base_model_hash"]  # carried over by llama.cpp's quantizer
    assert info["size_bytes"] < src["size_bytes"] / 3
    # width 64 is not a multiple of the 256-wide K-quant blocks: llama.cpp falls back to Q5_0/Q5_1/Q8_0 blocks
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(q4).tensors}
    assert "F32" in kinds and kinds - {"F32"} <= {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}
    # 4-5 bit blocks of random (incompressible) weights through 24 layers: close, not equal
    assert _corr(llama_logits(q4, prompt_ids), f32_logits) > 0.98
    assert len(greedy_tokens(q4, PROMPT, 5)) == 5


@pytest.mark.parametrize("qtype", ["Q5_K_M", "Q8_0"])
def test_other_quant_types(tiny_model, tmp_path, qtype, prompt_ids, f32_logits):
    out = quantize(tiny_model / "model.gguf", tmp_path / f"m-{qtype}.gguf", qtype.lower())
    assert inspect_gguf(out)["file_type_name"] == qtype
    assert _corr(llama_logits(out, prompt_ids), f32_logits) > {"Q5_K_M": 0.98, "Q8_0": 0.999}[qtype]


def _text_weight_shapes(model_path):
    """name -> columns (input width) of every 2-D text weight: what an imatrix holds one value per column for."""
    return {t.name: int(t.shape[0]) for t in gguf.GGUFReader(model_path).tensors
            if len(t.shape) == 2 and t.name.startswith("blk.")}


def _write_gguf_imatrix(path, shapes, seed=0, wrong_width=False):
    """An imatrix in llama-imatrix's GGUF layout: <tensor>.in_sum2 (sums of squared activations) + .counts."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["calibration/test.txt"])
    w.add_uint32("imatrix.chunk_count", 4)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, n in shapes.items():
        n = n + 1 if wrong_width else n
        w.add_tensor(f"{name}.in_sum2", (rng.random((1, n)) ** 4 * 2048).astype(np.float32))
        w.add_tensor(f"{name}.counts", np.array([[2048.0]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_imatrix_is_used(tiny_model, tmp_path, q4, prompt_ids, f32_logits):
    shapes = _text_weight_shapes(tiny_model / "model.gguf")
    imx_path = _write_gguf_imatrix(tmp_path / "imatrix.gguf", shapes)
    imx = load_imatrix(imx_path)
    assert set(imx.values) == set(shapes) and imx.datasets == ["calibration/test.txt"] and imx.chunk_count == 4
    some = next(iter(shapes))
    raw = gguf.GGUFReader(imx_path).tensors[0]
    np.testing.assert_allclose(imx.values[raw.name.removesuffix(".in_sum2")],
                               np.asarray(raw.data).reshape(-1) / 2048, rtol=1e-6)
    assert imx.values[some].shape == (shapes[some],)

    out = quantize(tiny_model / "model.gguf", tmp_path / "q4-imatrix.gguf", "Q4_K_M", imatrix=imx_path)
    r = gguf.GGUFReader(out)
    assert r.fields["quantize.imatrix.entries_count"].contents() == len(shapes)
    assert r.fields["quantize.imatrix.chunks_count"].contents() == 4
    assert r.fields["quantize.imatrix.dataset"].contents() == "calibration/test.txt"
    plain = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(q4).tensors}
    changed = [t.name for t in r.tensors if np.asarray(t.data).tobytes() != plain[t.name]]
    assert any(n.startswith("blk.") for n in changed)  # the importance weights steered the rounding
    assert _corr(llama_logits(out, prompt_ids), f32_logits) > 0.98


def test_imatrix_of_another_model_is_refused(tiny_model, tmp_path):
    imx = _write_gguf_imatrix(tmp_path / "bad.gguf", _text_weight_shapes(tiny_model / "model.gguf"), wrong_width=True)
    with pytest.raises(ModelError, match="failed to quantize to Q4_K_M"):
        quantize(tiny_model / "model.gguf", tmp_path / "out.gguf", "Q4_K_M", imatrix=imx)
    assert not (tmp_path / "out.gguf").exists()


def test_legacy_imatrix_format(tmp_path):
    """llama-imatrix's old binary .dat: entries of (name, ncall, values = mean * ncall), then chunks and dataset."""
    body = struct.pack("<i", 2)
    for name, ncall, vals in [("blk.0.attn_q.weight", 4, [4.0, 8.0]), ("blk.0.ffn_up.weight", 0, [1.5, 2.5])]:
        body += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, len(vals))
        body += struct.pack(f"<{len(vals)}f", *vals)
    body += struct.pack("<i", 7) + struct.pack("<i", 8) + b"calib.tx"
    (tmp_path / "imatrix.dat").write_bytes(body)
    imx = load_imatrix(tmp_path / "imatrix.dat")
    np.testing.assert_array_equal(imx.values["blk.0.attn_q.weight"], [1.0, 2.0])
    np.testing.assert_array_equal(imx.values["blk.0.ffn_up.weight"], [1.5, 2.5])  # ncall 0: taken as is
    assert imx.chunk_count == 7 and imx.datasets == ["calib.tx"]
    (tmp_path / "junk.dat").write_bytes(b"\x01\x00\x00\x00\xff")
    with pytest.raises(ModelError, match="not an imatrix file"):
        load_imatrix(tmp_path / "junk.dat")
    with pytest.raises(ModelError, match="imatrix file not found"):
        load_imatrix(tmp_path / "missing.dat")


def test_quantize_errors(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=r"type='Q2_K'.*Q4_K_M, Q5_K_M, Q8_0"):
        quantize(tiny_model / "model.gguf", tmp_path / "o.gguf", "Q2_K")
    with pytest.raises(ModelError, match="is an mmproj"):
        quantize(tiny_model / "mmproj.gguf", tmp_path / "o.gguf", "Q4_K_M")
    with pytest.raises(ConfigError, match="overwrite the input"):
        quantize(tiny_model / "model.gguf", tiny_model / "model.gguf", "Q8_0")
    with pytest.raises(ModelError, match="no such file"):
        quantize(tmp_path / "nope.gguf", tmp_path / "o.gguf", "Q8_0")
