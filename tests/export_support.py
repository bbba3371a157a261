"""Helpers for the export tests: run a GGUF (+ mmproj) through llama-cpp-python and read logits back.

Kept apart from the backend (edge_agent/vlm/llama_cpp.py) on purpose: these tests check the exported files
against transformers with the raw bindings, independent of how the product drives llama.cpp.
"""

from __future__ import annotations

import ctypes
import io
import itertools
from pathlib import Path

import numpy as np


def test_image(width: int = 160, height: int = 96):
    """A seeded RGB PIL image with a red disc. Sides are multiples of 32 px, so neither side resizes it."""
    from PIL import Image, ImageDraw

    rng = np.random.RandomState(0)
    img = Image.fromarray((rng.rand(height, width, 3) * 255).astype(np.uint8))
    ImageDraw.Draw(img).ellipse((width // 4, height // 5, width // 4 + 60, height // 5 + 60), fill=(255, 0, 0))
    return img


test_image.__test__ = False  # a helper, not a test


def open_llama(model_path: Path, *, f32_cache: bool = False, logits_all: bool = False, n_ctx: int = 512):
    from edge_agent.vlm.llama_cpp import load_llama  # without the extra weight buffers on an AMX CPU, as the product

    kw = dict(type_k=0, type_v=0) if f32_cache else {}  # GGML_TYPE_F32 KV cache (default is F16)
    # One thread: on a shared 2-core machine two ggml threads spin-wait on each other and can stall for seconds.
    return load_llama(model_path, n_ctx=n_ctx, n_threads=1, n_threads_batch=1, verbose=False, logits_all=logits_all,
                      seed=0, **kw)


def llama_logits(model_path: Path, ids: list[int], *, f32_cache: bool = False) -> np.ndarray:
    """Logits for every position of `ids` (n_tokens x n_vocab)."""
    llm = open_llama(model_path, f32_cache=f32_cache, logits_all=True)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def llama_image_logits(model_path: Path, mmproj_path: Path, image, before: str, after: str, *,
                       f32_cache: bool = False) -> tuple[np.ndarray, int]:
    """Last-token logits of `before <image> after` through llama.cpp's mtmd path; also the image's token count."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as M

    llm = open_llama(model_path, f32_cache=f32_cache, n_ctx=1024)
    params = M.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, 1, False
    params.warmup = False  # the warm-up encodes a 1472x1472 dummy image: seconds we do not need
    ctx = M.mtmd_init_from_file(str(mmproj_path).encode(), llm.model, params)
    assert ctx, f"mtmd could not load {mmproj_path}"
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    bitmap = M.mtmd_helper_bitmap_init_from_buf(ctx, (ctypes.c_uint8 * len(data)).from_buffer(data), len(data), False)
    chunks = M.mtmd_input_chunks_init()
    try:
        text = (before + M.mtmd_default_marker().decode() + after).encode()
        inp = M.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), False, True
        assert M.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), (M.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
        n_image_tokens = 0
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                llm.eval([ptr[j] for j in range(n.value)])
            else:
                n_image_tokens += M.mtmd_input_chunk_get_n_tokens(chunk)
                n_past = llama_cpp.llama_pos(0)
                rc = M.mtmd_helper_eval_chunk_single(ctx, llm._ctx.ctx, chunk, llama_cpp.llama_pos(llm.n_tokens), 0,
                                                     llm.n_batch, False, ctypes.byref(n_past))
                assert rc == 0
                llm.n_tokens = n_past.value
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()
        return logits, n_image_tokens
    finally:
        M.mtmd_input_chunks_free(chunks)
        M.mtmd_bitmap_free(bitmap)
        M.mtmd_free(ctx)
        llm.close()


def greedy_tokens(model_path: Path, prompt: str, n: int = 5) -> list[int]:
    """The first n greedily generated token ids (EOS not treated specially: a random model may pick it)."""
    llm = open_llama(model_path)
    try:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        return list(itertools.islice(llm.generate(ids, temp=0.0, top_k=1, reset=True), n))
    finally:
        llm.close()
