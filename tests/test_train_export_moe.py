"""The Qwen3-VL MoE exporter (qwen3vlmoe): a tiny MoE made here agrees with transformers through llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

from export_support import llama_image_logits, llama_logits, test_image  # noqa: E402

TEXT = '<|im_start|>user\nWhere are my keys?<|im_end|>\n<|im_start|>assistant\n{"description": "<face_2> opened the door"}'


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, Qwen3VLMoeForConditionalGeneration

    from edge_agent.export.moe_export import make_tiny_moe

    hf, model_path, mmproj_path = make_tiny_moe(tmp_path_factory.mktemp("moe"), seed=0)
    tok = AutoTokenizer.from_pretrained(hf)
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    return hf, model_path, mmproj_path, tok, model


def test_gguf_layout(tiny_moe):
    from edge_agent.vlm.gguf_info import inspect_gguf

    _, model_path, mmproj_path, _, model = tiny_moe
    info = inspect_gguf(model_path)
    assert info["architecture"] == "qwen3vlmoe"
    import gguf

    r = gguf.GGUFReader(model_path)
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in r.tensors}  # GGUF order: innermost first
    assert shapes["blk.0.ffn_gate_exps.weight"] == (64, 48, 4)
    assert shapes["blk.0.ffn_up_exps.weight"] == (64, 48, 4)
    assert shapes["blk.0.ffn_down_exps.weight"] == (48, 64, 4)
    assert shapes["blk.0.ffn_gate_inp.weight"] == (64, 4)
    kv = {f.name: f for f in r.fields.values()}
    assert int(kv["qwen3vlmoe.expert_count"].parts[-1][0]) == 4
    assert int(kv["qwen3vlmoe.expert_used_count"].parts[-1][0]) == 2
    assert inspect_gguf(mmproj_path)["architecture"] == "clip"


def test_text_logits_match_transformers(tiny_moe):
    import torch

    _, model_path, _, tok, model = tiny_moe
    ids = tok(TEXT)["input_ids"]
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        # the experts matter to what is compared: without them the logits move
        saved = [layer.mlp.experts.down_proj.clone() for layer in model.model.language_model.layers]
        for layer in model.model.language_model.layers:
            layer.mlp.experts.down_proj.zero_()
        without = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        for layer, w in zip(model.model.language_model.layers, saved):
            layer.mlp.experts.down_proj.copy_(w)
    assert np.abs(want - without).max() > 1e-2
    got = llama_logits(model_path, ids, f32_cache=True)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 5e-4
    assert np.abs(llama_logits(model_path, ids) - want).max() < 2e-3  # default F16 KV cache


def test_image_prompt_logits_match_transformers(tiny_moe):
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    hf, model_path, mmproj_path, tok, model = tiny_moe
    image = test_image(160, 96)
    before, after = "I see", " the red cup on the table"
    pix = Qwen2VLImageProcessorPil.from_pretrained(hf)(images=[image], return_tensors="pt")
    n_image = int(pix["image_grid_thw"].prod()) // 4
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    ids = (tok(before)["input_ids"] + [tok.convert_tokens_to_ids("<|vision_start|>")] + [pad] * n_image
           + [tok.convert_tokens_to_ids("<|vision_end|>")] + tok(after)["input_ids"])
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids]), pixel_values=pix["pixel_values"],
                     image_grid_thw=pix["image_grid_thw"],
                     mm_token_type_ids=torch.tensor([[int(t == pad) for t in ids]])).logits[0, -1].numpy()
    got, n_llama = llama_image_logits(model_path, mmproj_path, image, before, after, f32_cache=True)
    assert n_llama == n_image
    assert np.abs(got - want).max() < 1e-3


def test_published_layout_is_read_too(tiny_moe, tmp_path):
    """Qwen's published MoE checkpoints store gate_up_proj as (E, hidden, 2F) and down_proj as (E, F, hidden)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from edge_agent.export.moe_export import export_hf_moe

    hf, model_path, _, tok, _ = tiny_moe
    pub = shutil.copytree(hf, tmp_path / "hf")
    w = load_file(pub / "model.safetensors")
    for k in list(w):
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            w[k] = w[k].transpose(1, 2).contiguous()
    save_file(w, pub / "model.safetensors", metadata={"format": "pt"})
    out_model, _ = export_hf_moe(pub, tmp_path / "out", "f32")
    ids = tok(TEXT)["input_ids"]
    assert np.array_equal(llama_logits(out_model, ids, f32_cache=True), llama_logits(model_path, ids, f32_cache=True))


def test_dense_checkpoint_is_refused(tiny_model, tmp_path):
    from edge_agent.errors import ModelError
    from edge_agent.export.moe_export import export_hf_moe, is_moe_checkpoint

    assert not is_moe_checkpoint(tiny_model / "hf")
    with pytest.raises(ModelError, match="is not Qwen3VLMoeForConditionalGeneration"):
        export_hf_moe(tiny_model / "hf", tmp_path / "o")


def test_phase_one_trains_and_exports_a_moe(tiny_moe, tmp_path):
    """Phase One on the tiny MoE: one GSPO step, then the export writes a qwen3vlmoe folder llama.cpp loads."""
    from test_train_phase_one import tiny_cfg

    from edge_agent.errors import ConfigError
    from edge_agent.train.config import from_dict
    from edge_agent.train.phase_one import train
    from edge_agent.vlm.gguf_info import inspect_gguf

    hf = tiny_moe[0]
    cfg = from_dict(tiny_cfg(hf.parent, tmp_path, gspo={"max_steps": 1},
                             export={"enabled": True, "outtype": "f32", "quant_type": "none"}))
    s = train(cfg, tmp_path / "run")
    assert s["steps"] == 1 and s["export"]["arch"] == "qwen3vlmoe"
    folder = tmp_path / "run" / "model"
    assert inspect_gguf(folder / "model.gguf")["architecture"] == "qwen3vlmoe"
    ids = tiny_moe[3](TEXT)["input_ids"]
    assert np.isfinite(llama_logits(folder / "model.gguf", ids)).all()
    bad = from_dict(tiny_cfg(hf.parent, tmp_path, export={"enabled": True, "quant_type": "Q4_K_M"}))
    from edge_agent.train.export import export_checkpoint

    with pytest.raises(ConfigError, match="qwen3vlmoe"):
        export_checkpoint(hf, tmp_path / "x", bad.export)
