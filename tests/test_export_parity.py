"""The exported tiny model in llama.cpp computes what transformers computes: tokens, text logits, image-prompt logits.

The comparison uses llama.cpp's default F16 KV cache (what the backend runs) against the 1e-3 bound, and an
F32 cache where the bound can be much tighter: there the only differences left are float summation order
(text) and ggml's table-based GELU in the vision tower (image).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from export_support import llama_image_logits, llama_logits, open_llama, test_image  # noqa: E402

TEXTS = [
    "I put the red cup on the shelf in the kitchen.",
    '<|im_start|>user\nWhere are my keys?<|im_end|>\n<|im_start|>assistant\n{"description": "<face_2> opened the door"}',
    "At 00:12 I picked up the blue book. 3.14 ZOE!! e\u0301t\u00e9 \U0001f511 \t tabs\n\nnewlines",
]


@pytest.fixture(scope="module")
def hf(tiny_model):
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tiny_model / "hf")
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model / "hf", dtype=torch.float32).eval()
    return tok, model


def test_tokenization_matches_transformers(tiny_model, hf):
    tok, _ = hf
    llm = open_llama(tiny_model / "model.gguf")
    try:
        for text in TEXTS:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"], text
            ids = tok(text)["input_ids"]
            assert llm.detokenize(ids, special=True).decode() == tok.decode(ids)
    finally:
        llm.close()


def test_text_logits_match_transformers(tiny_model, hf):
    import torch

    tok, model = hf
    ids = tok(TEXTS[1])["input_ids"]
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(want).max() > 0.1  # a non-trivial comparison
    got = llama_logits(tiny_model / "model.gguf", ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-3
    got32 = llama_logits(tiny_model / "model.gguf", ids, f32_cache=True)
    assert np.abs(got32 - want).max() < 5e-5


def test_image_prompt_logits_match_transformers(tiny_model, hf):
    """Vision tower, deepstack injection and M-RoPE positions of image tokens, on a non-square image."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok, model = hf
    image = test_image(160, 96)
    before, after = "I see", " the red cup on the table"
    proc = Qwen2VLImageProcessorPil.from_pretrained(tiny_model / "hf")
    pix = proc(images=[image], return_tensors="pt")
    grid = pix["image_grid_thw"]
    n_image = int(grid.prod()) // 4  # 2x2 merge
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    ids = (tok(before)["input_ids"] + [tok.convert_tokens_to_ids("<|vision_start|>")] + [pad] * n_image
           + [tok.convert_tokens_to_ids("<|vision_end|>")] + tok(after)["input_ids"])
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids]), pixel_values=pix["pixel_values"], image_grid_thw=grid,
                     mm_token_type_ids=torch.tensor([[int(t == pad) for t in ids]])).logits[0, -1].numpy()
        no_image = model(input_ids=torch.tensor([tok(before + after)["input_ids"]])).logits[0, -1].numpy()
    got, n_llama = llama_image_logits(tiny_model / "model.gguf", tiny_model / "mmproj.gguf", image, before, after)
    assert n_llama == n_image == 15  # 160x96 px -> 10x6 patches -> 5x3 merged tokens
    assert np.abs(want - no_image).max() > 1e-2  # the image matters to the logits being compared
    assert np.abs(got - want).max() < 1e-3
    got32, _ = llama_image_logits(tiny_model / "model.gguf", tiny_model / "mmproj.gguf", image, before, after,
                                  f32_cache=True)
    assert np.abs(got32 - want).max() < 3e-4


def _official_style_checkpoint(tiny_model, dst):
    """The tiny checkpoint rewritten the way Qwen publishes Qwen3-VL-2B/4B: bfloat16 weights, tied embeddings
    (no lm_head tensor), and the pre-transformers-5 config keys `rope_scaling` + `rope_theta`."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    hf = shutil.copytree(tiny_model / "hf", dst)
    weights = {k: v.to(torch.bfloat16) for k, v in load_file(hf / "model.safetensors").items() if k != "lm_head.weight"}
    save_file(weights, hf / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((hf / "config.json").read_text())
    tc = cfg["text_config"]
    rope = tc.pop("rope_parameters")
    tc["rope_theta"] = rope.pop("rope_theta")
    tc["rope_scaling"] = rope
    tc["tie_word_embeddings"] = cfg["tie_word_embeddings"] = True
    (hf / "config.json").write_text(json.dumps(cfg, indent=2))
    return hf


def test_official_style_checkpoint_bf16_tied(tiny_model, tmp_path):
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    from edge_agent.export import export_hf
    from edge_agent.vlm.gguf_info import inspect_gguf

    hf = _official_style_checkpoint(tiny_model, tmp_path / "hf")
    model_path, _ = export_hf(hf, tmp_path / "out", "f32")
    assert inspect_gguf(model_path)["n_tensors"] == 24 * 11 + 2  # no output.weight: llama.cpp reuses token_embd
    tok = AutoTokenizer.from_pretrained(hf)
    model = Qwen3VLForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    ids = tok(TEXTS[0])["input_ids"]
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(llama_logits(model_path, ids) - want).max() < 1e-3
