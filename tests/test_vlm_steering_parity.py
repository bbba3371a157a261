"""The steering vector in llama.cpp equals a torch forward hook on the output of model.language_model.layers[22]."""

import numpy as np
import pytest

from edge_agent.types import Message, SteeringVector
from edge_agent.vlm.fake import render_text


@pytest.fixture(scope="module")
def hf_model(tiny_model):
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tiny_model / "hf")
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model / "hf", dtype=torch.float32).eval()
    return tok, model


def _hf_logits(model, ids, vector=None, layer=22):
    import torch

    handle = None
    if vector is not None:
        v = torch.from_numpy(vector)

        def add(module, inputs, output):
            return (output[0] + v,) + tuple(output[1:]) if isinstance(output, tuple) else output + v

        handle = model.model.language_model.layers[layer].register_forward_hook(add)
    try:
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    finally:
        if handle is not None:
            handle.remove()


def test_vector_at_layer_22_matches_forward_hook(tiny_backend, hf_model):
    tok, model = hf_model
    msgs = [Message("system", ["you write short memories"]),
            Message("user", ["the red cup is on the table near the door; write the memory"])]
    ids = tiny_backend.prompt_tokens(msgs)
    assert ids == tok(render_text(msgs))["input_ids"]  # same rendering and tokenization as transformers

    vec = SteeringVector(3.0 * np.random.RandomState(0).randn(64).astype(np.float32), layer=22, scale=1.5,
                         base_model_hash=tiny_backend.model_hash)
    try:
        base = tiny_backend.logits(msgs)
        assert np.abs(base - _hf_logits(model, ids)).max() < 1e-3  # f32 export: llama.cpp == transformers
        tiny_backend.set_steering(vec)
        steered = tiny_backend.logits(msgs)
    finally:
        tiny_backend.set_steering(None)
    hooked = _hf_logits(model, ids, vec.applied(), layer=22)
    diff = np.abs(steered - hooked).max()
    effect = np.abs(steered - base).max()
    print(f"steering parity max|diff| {diff:.2e}, effect {effect:.3f}")
    assert diff < 1e-3
    assert effect > 0.1  # the vector measurably changes the logits
    assert np.abs(steered - _hf_logits(model, ids, vec.applied(), layer=21)).max() > 10 * diff  # offset matters


def test_image_prompt_with_vector_matches_transformers(tiny_backend, hf_model, tiny_model):
    """The backend's own image path (raw RGB bitmap, tokenize-from-parts, cached embeddings) + the vector, against
    transformers with the same hook: vision tower, deepstack, M-RoPE and the vector on image positions."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from edge_agent.types import ImagePart

    tok, model = hf_model
    rng = np.random.RandomState(0)
    pixels = (rng.rand(96, 160, 3) * 255).astype(np.uint8)
    pixels[20:70, 40:90] = (255, 0, 0)
    msgs = [Message("user", [ImagePart("parity-frame", pixels), "the red cup is on the table"])]
    got_ids = tiny_backend.prompt_tokens(msgs)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    ids = [pad if t == -1 else t for t in got_ids]
    assert got_ids.count(-1) == 15  # 160x96 -> 10x6 patches -> 5x3 merged tokens
    expected = tok(render_text(msgs).replace("<image:parity-frame>",
                                             "<|vision_start|>" + "<|image_pad|>" * 15 + "<|vision_end|>"))
    assert ids == expected["input_ids"]

    proc = Qwen2VLImageProcessorPil.from_pretrained(tiny_model / "hf")
    pix = proc(images=[pixels], return_tensors="pt")
    vec = SteeringVector(3.0 * np.random.RandomState(1).randn(64).astype(np.float32), layer=22,
                         base_model_hash=tiny_backend.model_hash)

    def hf(v):
        handle = None
        if v is not None:
            t = torch.from_numpy(v)
            handle = model.model.language_model.layers[22].register_forward_hook(
                lambda mod, inp, out: (out[0] + t,) + tuple(out[1:]) if isinstance(out, tuple) else out + t)
        try:
            with torch.no_grad():
                return model(input_ids=torch.tensor([ids]), pixel_values=pix["pixel_values"],
                             image_grid_thw=pix["image_grid_thw"],
                             mm_token_type_ids=torch.tensor([[int(t == pad) for t in ids]])).logits[0, -1].numpy()
        finally:
            if handle is not None:
                handle.remove()

    try:
        base = tiny_backend.logits(msgs)
        tiny_backend.set_steering(vec)
        steered = tiny_backend.logits(msgs)
    finally:
        tiny_backend.set_steering(None)
    d0, d1 = np.abs(base - hf(None)).max(), np.abs(steered - hf(vec.applied())).max()
    print(f"image prompt: max|diff| {d0:.2e} without vector, {d1:.2e} with; effect {np.abs(steered - base).max():.3f}")
    assert d0 < 1e-3 and d1 < 1e-3 and np.abs(steered - base).max() > 0.1
