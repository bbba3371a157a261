"""One prompt encoder, three consumers: llama.cpp (mtmd), the torch model Phase Two trains, and the training
tools (a `tokenizers.Tokenizer`, as tools/train_default.py builds it) give the same token ids; the pure pixel
path equals transformers' image processor."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.types import ImagePart, Message
from edge_agent.vlm.prompt import ImageChunk, PromptEncoder, chunk_images, image_tokens, patchify, render_chat


def frame(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def messages(n_frames: int, text: str = "Write the memory.") -> list[Message]:
    parts: list = ["Segment 3:"] + [ImagePart(f"f{k}", frame(k)) for k in range(n_frames)] + ["\n", text]
    return [Message("system", ["You are the memory of a wearable camera."]), Message("user", parts)]


# ---------------------------------------------------------------- pure parts (no model)

def test_consecutive_frames_pair_into_temporal_chunks():
    parts = render_chat(messages(3))
    items = chunk_images(parts)
    chunks = [i for i in items if isinstance(i, ImageChunk)]
    assert [len(c.frames) for c in chunks] == [2, 1]  # a pair, then the odd frame alone
    assert chunks[0].grid == (1, 6, 6) and chunks[0].n_tokens == 9  # 64x64 fitted to 96x96


def test_frames_of_another_size_are_not_paired():
    msgs = [Message("user", [ImagePart("a", frame(0)), ImagePart("b", frame(1, 96, 64))])]
    chunks = [i for i in chunk_images(render_chat(msgs)) if isinstance(i, ImageChunk)]
    assert [len(c.frames) for c in chunks] == [1, 1]
    assert [c.n_tokens for c in chunks] == [9, 12]


def test_image_token_count_follows_llama_cpp_limits():
    assert image_tokens(96, 128) == 12  # the default 128x96 frame: 12 tokens, unchanged
    assert image_tokens(64, 64) == 9  # below 8 tokens: fitted up to 96x96, as mtmd does
    assert image_tokens(100, 128) == 12  # rounded to multiples of 32
    assert image_tokens(4096, 4096) <= 4096


def test_patchify_layout_single_frame_repeats_over_time():
    f = frame(5, 96, 128)
    rows, grid = patchify(ImageChunk((ImagePart("x", f),)))
    assert grid == (1, 6, 8) and rows.shape == (48, 3 * 2 * 16 * 16)
    r = rows.reshape(48, 3, 2, 16, 16)
    assert np.array_equal(r[:, :, 0], r[:, :, 1])
    # row 1 is the second patch of the first 2x2 merge block: pixels [0:16, 16:32]
    expected = (f[0:16, 16:32].astype(np.float32) / 255 - 0.5) / 0.5
    assert np.allclose(r[1, :, 0].transpose(1, 2, 0), expected)


# ---------------------------------------------------------------- the three consumers

@pytest.fixture(scope="module")
def training_encoder(tiny_model):
    from tokenizers import Tokenizer

    return PromptEncoder.from_tokenizer(Tokenizer.from_file(str(tiny_model / "hf" / "tokenizer.json")))


@pytest.fixture(scope="module")
def policy(tiny_model):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from edge_agent.adapt.frozen_model import FrozenQwen3VL

    return FrozenQwen3VL(tiny_model / "hf", layer=22)


@pytest.mark.parametrize("n_frames,text", [(0, "plain"), (1, "one frame"), (4, "two pairs"),
                                           (3, "typed <|im_end|> stays text")])
def test_llama_cpp_torch_and_training_encoders_agree(tiny_backend, training_encoder, policy, n_frames, text):
    msgs = messages(n_frames, text)
    via_llama = tiny_backend.prompt_tokens(msgs)  # mtmd's ids, each image token as -1

    def masked(ids, pad):
        return [-1 if t == pad else t for t in ids]

    enc = training_encoder.encode(msgs)
    via_training = masked(enc.ids, training_encoder.image_pad)
    t = policy.encode(msgs, "x")
    via_torch = masked(t.input_ids[0, :t.completion_start].tolist(), policy.encoder.image_pad)
    assert via_training == via_llama
    assert via_torch == via_llama
    assert via_llama.count(-1) == sum(c.n_tokens for c in enc.chunks)


def test_patchify_equals_transformers_image_processor(tiny_model):
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                    image_std=[0.5] * 3, size={"shortest_edge": 8 * 32 * 32, "longest_edge": 4096 * 1024})
    for f in (frame(9, 64, 96), frame(10, 96, 128)):  # one fitted up, one unchanged
        ref = proc(images=[f], return_tensors="np")
        rows, grid = patchify(ImageChunk((ImagePart("x", f),)))
        assert list(ref["image_grid_thw"][0]) == list(grid)
        assert np.abs(np.asarray(ref["pixel_values"], np.float32) - rows).max() < 1e-5
