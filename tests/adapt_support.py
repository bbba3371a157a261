"""Helpers for the adapt tests: a tiny Qwen3-VL checkpoint, made here when the shared fixture is absent.

The shared session fixture `tiny_model` (tests/conftest.py) is preferred; `hf_dir(request,
tmp_path_factory)` falls back to building the same kind of model (text hidden 64 x 24 layers, vision depth 3
with DeepStack at vision layers [0, 1]) with a byte-level BPE tokenizer, in about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_agent.types import ImagePart, Message

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]

_BUILT: dict[str, Path] = {}


def build_tiny_qwen3vl(out: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    pat = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pat), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = ['{"description": "the red cup is on the shelf"}', "a person picks up the keys near the door",
              "memory: kitchen, stove on, blue bowl", "write the memory for the new segment"] * 50
    tr = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, tr)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    ids = {s: fast.convert_tokens_to_ids(s) for s in SPECIAL}
    cfg = Qwen3VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=24, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=len(fast), max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True}, tie_word_embeddings=False),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0, 1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    Qwen3VLForConditionalGeneration(cfg).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3, "size": {"shortest_edge": 64 * 64, "longest_edge": 256 * 256}}))
    return out


def hf_dir(request, tmp_path_factory) -> Path:
    """DIR/hf of the shared `tiny_model` fixture if it exists, else a tiny checkpoint built once per session."""
    try:
        return Path(request.getfixturevalue("tiny_model")) / "hf"
    except Exception as e:  # pytest's FixtureLookupError when conftest has no tiny_model yet
        if type(e).__name__ != "FixtureLookupError":
            raise
    if "own" not in _BUILT:
        _BUILT["own"] = build_tiny_qwen3vl(tmp_path_factory.mktemp("adapt_tiny") / "hf")
    return _BUILT["own"]


def frame(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return (rng.rand(size, size, 3) * 255).astype(np.uint8)


def window_prompt(i: int, n_frames: int = 2, with_images: bool = True) -> list[Message]:
    """A short writer-like prompt for window i: two frames (one merged temporal pair) and an instruction."""
    parts: list = [f"Segment {i}:"]
    if with_images:
        parts += [ImagePart(f"w{i}/{k}", frame(1000 * i + k)) for k in range(n_frames)]
    parts.append("\nWrite the memory for the new segment.")
    return [Message("system", ["You are the memory of a wearable camera."]), Message("user", parts)]


def one_torch_thread():
    """Generator for a module fixture: torch on one thread while the module runs (the 2 shared cores are
    oversubscribed otherwise: tiny matmuls get slower with more threads), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- store scenes and fakes

OBJECTS = ["red cup", "blue bowl", "keys", "green book", "phone", "black bag", "white mug", "glasses",
           "wallet", "remote"]


def seed_windows(store, frames_dir, objects, *, idx_step: int = 5, frames: bool = True,
                 expires_in: float = 3600.0, fingerprint: str = "fp-test"):
    """One segment per object (indices 0, idx_step, 2*idx_step, ...), each with two valid candidates:
    one naming the place ("on the shelf") and one not, and two kept keyframes (PNG) when `frames`.
    Returns [(segment_id, shelf_candidate_id, plain_candidate_id)]."""
    import json
    import time
    from pathlib import Path

    from PIL import Image

    from edge_agent.types import Segment

    sid = store.get_or_create_stream("test.mp4", fingerprint, 0.0, "file")
    out = []
    for i, obj in enumerate(objects):
        k = idx_step * i
        seg_id, _ = store.commit_segment(sid, Segment(k, 10.0 * k, 10.0 * k + 10), memory=f"I saw the {obj}.",
                                         failure=None, writer_model="tiny", adapter_id=None, n_tokens=5,
                                         latency_s=0.1)
        a = store.add_candidate(seg_id, json.dumps({"description": f"I saw the {obj} on the shelf."}), valid=True,
                                failure=None, sampling={"temperature": 0.6}, source="sample")
        b = store.add_candidate(seg_id, json.dumps({"description": f"I saw the {obj}."}), valid=True,
                                failure=None, sampling={"temperature": 0.6}, source="sample")
        if frames:
            paths = []
            for j in range(2):
                p = Path(frames_dir) / f"{fingerprint}-{k}-{j}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame(100 * i + j)).save(p)
                paths.append(p)
            store.keep_frames(seg_id, paths, expires_at=time.time() + expires_in)
        out.append((seg_id, a, b))
    return out


def ask(store, question: str, correct: bool, corrected: str | None = None) -> int:
    """A question, an answer, and the wearer's feedback on it; returns the feedback id."""
    import time

    q = store.add_question(question, [], asked_at=time.time())
    a = store.add_answer(q, choice=None, text="not in memory", abstained=True, cited=[], model="tiny",
                         adapter_id=None)
    return store.add_feedback(a, correct, corrected)


class BagOfWords:
    """A deterministic stand-in for MiniLM: hashed bag of lower-case words, L2-normalised."""

    def __init__(self, dim: int = 256):
        self.dim = dim
        self.calls = 0

    def embed(self, texts):
        import re
        import zlib

        self.calls += 1
        m = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                m[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def memories_in_judge_call(call):
    import re

    text = "".join(p for p in call.messages[-1].parts if isinstance(p, str))
    return re.search(r"Memory A: (.*)\n", text).group(1), re.search(r"Memory B: (.*)\n", text).group(1)


def prefer(word: str, *, against: bool = False):
    """A judge reply function: the memory containing `word` is better (or worse with against=True)."""
    def reply(call):
        a, b = memories_in_judge_call(call)
        if (word in a) == (word in b):
            return '{"better": "tie"}'
        a_better = (word in a) != against
        return '{"better": "A"}' if a_better else '{"better": "B"}'
    return reply
