"""The exporter, checked against the Hugging Face weights it read (no llama.cpp needed): names, values, KVs, types."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from edge_agent.errors import ConfigError, ModelError
from edge_agent.export import base_model_hash, export_hf
from edge_agent.export.tiny import SPECIAL_TOKENS
from edge_agent.vlm.gguf_info import inspect_gguf

T = gguf.GGMLQuantizationType


def _read(path: Path):
    r = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in r.tensors}
    return kv, tensors


def _array(t) -> np.ndarray:
    """A GGUF tensor back in numpy (HF) layout, dequantized to float32."""
    shape = tuple(int(x) for x in reversed(t.shape))
    if t.tensor_type in (T.F32, T.F16):
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)


@pytest.fixture(scope="module")
def hf_weights(tiny_model):
    return load_file(tiny_model / "hf" / "model.safetensors")


@pytest.fixture(scope="module")
def hf_config(tiny_model):
    return json.loads((tiny_model / "hf" / "config.json").read_text())


def test_tiny_model_files_and_identity(tiny_model, hf_config):
    model = inspect_gguf(tiny_model / "model.gguf", expect="qwen3vl")
    mmproj = inspect_gguf(tiny_model / "mmproj.gguf", expect="mmproj")
    assert (model["architecture"], model["hidden_size"], model["n_layers"], model["file_type_name"]) == ("qwen3vl", 64, 24, "F32")
    assert (mmproj["architecture"], mmproj["projector_type"], mmproj["projection_dim"], mmproj["n_layers"]) == (
        "clip", "qwen3vl_merger", 64, 3)
    digest = base_model_hash(tiny_model / "hf")
    assert model["base_model_hash"] == mmproj["base_model_hash"] == digest
    assert digest == hashlib.sha256((tiny_model / "hf" / "model.safetensors").read_bytes()).hexdigest()
    assert hf_config["text_config"]["num_hidden_layers"] >= 23  # layer 22 (the adapter layer) exists
    assert hf_config["vision_config"]["deepstack_visual_indexes"] == [0, 1]
    n_params = sum(int(np.prod(v.shape)) for v in load_file(tiny_model / "hf" / "model.safetensors").values())
    assert 500_000 < n_params < 4_000_000


def test_text_tensors_equal_hf_weights(tiny_model, hf_weights):
    _, tensors = _read(tiny_model / "model.gguf")
    lm = "model.language_model."
    expected = {
        "token_embd.weight": lm + "embed_tokens.weight", "output.weight": "lm_head.weight",
        "output_norm.weight": lm + "norm.weight",
    }
    for i in range(24):
        for g, h in [("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                     ("attn_output", "self_attn.o_proj"), ("attn_q_norm", "self_attn.q_norm"),
                     ("attn_k_norm", "self_attn.k_norm"), ("attn_norm", "input_layernorm"),
                     ("ffn_norm", "post_attention_layernorm"), ("ffn_gate", "mlp.gate_proj"),
                     ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj")]:
            expected[f"blk.{i}.{g}.weight"] = f"{lm}layers.{i}.{h}.weight"
    assert set(tensors) == set(expected)
    for g, h in expected.items():
        assert tensors[g].tensor_type == T.F32
        np.testing.assert_array_equal(_array(tensors[g]), hf_weights[h], err_msg=g)


def test_vision_tensors_equal_hf_weights(tiny_model, hf_weights):
    _, tensors = _read(tiny_model / "mmproj.gguf")
    v = "model.visual."
    conv = hf_weights[v + "patch_embed.proj.weight"]  # (out, in, t=2, kh, kw)
    np.testing.assert_array_equal(_array(tensors["v.patch_embd.weight"]), conv[:, :, 0])
    np.testing.assert_array_equal(_array(tensors["v.patch_embd.weight.1"]), conv[:, :, 1])
    pairs = {
        "v.patch_embd.bias": "patch_embed.proj.bias", "v.position_embd.weight": "pos_embed.weight",
        "mm.0.weight": "merger.linear_fc1.weight", "mm.2.bias": "merger.linear_fc2.bias",
        "v.post_ln.weight": "merger.norm.weight",
        # deepstack merger k taps vision layer deepstack_visual_indexes[k]; here indexes [0, 1]
        "v.deepstack.0.fc1.weight": "deepstack_merger_list.0.linear_fc1.weight",
        "v.deepstack.1.norm.bias": "deepstack_merger_list.1.norm.bias",
        "v.blk.2.attn_qkv.weight": "blocks.2.attn.qkv.weight", "v.blk.1.ffn_down.bias": "blocks.1.mlp.linear_fc2.bias",
        "v.blk.0.ln1.weight": "blocks.0.norm1.weight",
    }
    for g, h in pairs.items():
        np.testing.assert_array_equal(_array(tensors[g]), hf_weights[v + h], err_msg=g)
    n_hf_vision = sum(1 for k in hf_weights if k.startswith(v))
    assert len(tensors) == n_hf_vision + 1  # the Conv3D became two kernels


def test_model_kvs(tiny_model, hf_config):
    from tokenizers import Tokenizer

    kv, _ = _read(tiny_model / "model.gguf")
    tc = hf_config["text_config"]
    assert kv["general.architecture"] == "qwen3vl" and kv["general.type"] == "model"
    assert kv["qwen3vl.block_count"] == 24
    assert kv["qwen3vl.embedding_length"] == 64 and kv["qwen3vl.feed_forward_length"] == 128
    assert kv["qwen3vl.attention.head_count"] == 4 and kv["qwen3vl.attention.head_count_kv"] == 2
    assert kv["qwen3vl.attention.key_length"] == kv["qwen3vl.attention.value_length"] == 16
    assert kv["qwen3vl.rope.dimension_sections"] == [2, 3, 3, 0]
    assert kv["qwen3vl.rope.freq_base"] == pytest.approx(5e6)
    assert kv["qwen3vl.n_deepstack_layers"] == 2
    assert kv["qwen3vl.context_length"] == tc["max_position_embeddings"]
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "qwen2"

    tok = Tokenizer.from_file(str(tiny_model / "hf" / "tokenizer.json"))
    n = tok.get_vocab_size(with_added_tokens=True)
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(tokens) == tc["vocab_size"] > n  # padded embedding rows
    for text, i in tok.get_vocab(with_added_tokens=True).items():
        assert tokens[i] == text
    for s in SPECIAL_TOKENS:
        assert types[tok.token_to_id(s)] == gguf.TokenType.CONTROL
    assert types[n] == gguf.TokenType.UNUSED and tokens[n] == f"[PAD{n}]"
    assert types[tok.token_to_id("Ġcup")] == gguf.TokenType.NORMAL
    assert kv["tokenizer.ggml.eos_token_id"] == tok.token_to_id("<|im_end|>")
    assert kv["tokenizer.ggml.padding_token_id"] == tok.token_to_id("<|endoftext|>")
    assert kv["tokenizer.ggml.add_bos_token"] is False
    merges = json.loads((tiny_model / "hf" / "tokenizer.json").read_text())["model"]["merges"]
    assert len(kv["tokenizer.ggml.merges"]) == len(merges)
    assert kv["tokenizer.chat_template"] == (tiny_model / "hf" / "chat_template.jinja").read_text()


def test_mmproj_kvs(tiny_model):
    kv, _ = _read(tiny_model / "mmproj.gguf")
    assert kv["general.architecture"] == "clip" and kv["general.type"] == "mmproj"
    assert kv["clip.projector_type"] == "qwen3vl_merger" and kv["clip.has_vision_encoder"] is True
    assert kv["clip.vision.projection_dim"] == 64 and kv["clip.vision.embedding_length"] == 32
    assert kv["clip.vision.block_count"] == 3 and kv["clip.vision.attention.head_count"] == 2
    assert kv["clip.vision.patch_size"] == 16 and kv["clip.vision.image_size"] == 128  # sqrt(64 positions) * 16
    assert kv["clip.vision.spatial_merge_size"] == 2 and kv["clip.use_gelu"] is True
    assert kv["clip.vision.is_deepstack_layers"] == [True, True, False]
    assert kv["clip.vision.image_mean"] == [0.5, 0.5, 0.5] and kv["clip.vision.image_std"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("outtype,weight_type", [("f16", T.F16), ("q8_0", T.Q8_0)])
def test_outtypes(tiny_model, hf_weights, tmp_path, outtype, weight_type):
    model_path, mmproj_path = export_hf(tiny_model / "hf", tmp_path, outtype)
    kv, tensors = _read(model_path)
    assert kv["general.file_type"] == {"f16": 1, "q8_0": 7}[outtype]
    assert tensors["blk.22.attn_q.weight"].tensor_type == weight_type
    assert tensors["blk.22.attn_norm.weight"].tensor_type == T.F32  # 1-D stays F32
    got, want = _array(tensors["blk.22.ffn_up.weight"]), hf_weights["model.language_model.layers.22.mlp.up_proj.weight"]
    # f16 keeps ~3 decimal digits; q8_0 keeps each 32-block to 1/127 of its largest value
    tol = np.abs(want).max() * (1e-3 if outtype == "f16" else 1 / 127)
    assert np.abs(got - want).max() <= tol
    _, vt = _read(mmproj_path)
    assert vt["v.position_embd.weight"].tensor_type == T.F32
    assert vt["v.patch_embd.weight"].tensor_type == (T.F16 if outtype == "f16" else T.F32)
    assert vt["mm.0.weight"].tensor_type == weight_type


def test_mmproj_outtype_override(tiny_model, tmp_path):
    model_path, mmproj_path = export_hf(tiny_model / "hf", tmp_path, "q8_0", mmproj_outtype="f16")
    assert inspect_gguf(model_path)["file_type_name"] == "Q8_0"
    assert inspect_gguf(mmproj_path)["file_type_name"] == "F16"


def test_export_is_deterministic(tiny_model, tmp_path):
    model_path, mmproj_path = export_hf(tiny_model / "hf", tmp_path, "f32", name="edge-agent-tiny-qwen3vl-s0")
    assert model_path.read_bytes() == (tiny_model / "model.gguf").read_bytes()
    assert mmproj_path.read_bytes() == (tiny_model / "mmproj.gguf").read_bytes()


def _copy_hf(tiny_model: Path, dst: Path) -> Path:
    shutil.copytree(tiny_model / "hf", dst)
    return dst


def _edit_config(hf: Path, **changes) -> None:
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(changes)
    (hf / "config.json").write_text(json.dumps(cfg))


def test_export_errors(tiny_model, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"outtype='q4_k_m'.*f32, f16, q8_0"):
        export_hf(tiny_model / "hf", out, "q4_k_m")
    with pytest.raises(ConfigError, match="config.json: missing"):
        export_hf(tmp_path, out, "f32")

    moe = _copy_hf(tiny_model, tmp_path / "moe")
    _edit_config(moe, architectures=["Qwen3VLMoeForConditionalGeneration"], model_type="qwen3_vl_moe")
    with pytest.raises(ModelError, match="MoE.*not supported yet"):
        export_hf(moe, out, "f32")

    other = _copy_hf(tiny_model, tmp_path / "other")
    _edit_config(other, architectures=["LlamaForCausalLM"])
    with pytest.raises(ModelError, match="'LlamaForCausalLM' is not supported"):
        export_hf(other, out, "f32")

    no_weights = _copy_hf(tiny_model, tmp_path / "noweights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no \*\.safetensors"):
        export_hf(no_weights, out, "f32")

    no_pre = _copy_hf(tiny_model, tmp_path / "nopre")
    (no_pre / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match="image_mean"):
        export_hf(no_pre, out, "f32")

    cut = _copy_hf(tiny_model, tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        export_hf(cut, out, "f32")
    assert not (out / "model.gguf").exists()  # nothing half-written left behind


def test_bfloat16_checkpoint_exports_like_float32(tiny_model, tmp_path):
    """Official Qwen3-VL weights are bfloat16: the reader widens them exactly (bf16 -> f32 is lossless)."""
    import torch
    from safetensors.torch import load_file as load_torch, save_file

    bf = _copy_hf(tiny_model, tmp_path / "bf16")
    weights = {k: v.to(torch.bfloat16) for k, v in load_torch(bf / "model.safetensors").items()}
    save_file(weights, bf / "model.safetensors", metadata={"format": "pt"})
    _, tensors = _read(export_hf(bf, tmp_path / "out", "f32")[0])
    want = weights["model.language_model.layers.3.mlp.down_proj.weight"].to(torch.float32).numpy()
    np.testing.assert_array_equal(_array(tensors["blk.3.ffn_down.weight"]), want)
