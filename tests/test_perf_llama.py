"""What the writer's speed-ups rely on (issue 14): the frame-embedding cache and KV prefix reuse produce the
same tokens as llama.cpp alone evaluating every prompt from scratch (`edge_agent.bench.bare_generate`).

On the trained embedded default with writer prompts of a held-out synthetic clip: a random tiny model (or random
noise frames) gives near-ties in the logits that the ~1e-5 float differences between batchings flip."""

from pathlib import Path

import numpy as np

import pytest

from edge_agent.vlm.llama_cpp import LlamaCppBackend

from edge_agent.bench import bare_generate
from edge_agent.types import GREEDY, Sampling

SCHEMA = {"type": "object", "properties": {"description": {"type": "string", "maxLength": 80}},
          "required": ["description"], "additionalProperties": False}


def held_out_segments(tmp_dir: Path, n: int = 5):
    """Segments of a held-out synthetic clip, cut by the runtime's own capture path: prompts like the writer's,
    on which the trained model is decided (random-noise frames gave it near-ties that batching flips)."""
    from edge_agent.capture import open_source, segment_stream
    from edge_agent.config import CaptureConfig
    from edge_agent.synth import generate

    generate(seed=9150, minutes=1, out_dir=tmp_dir)
    cfg = CaptureConfig()
    with open_source(str(tmp_dir / "video.mp4"), cfg) as src:
        segs = []
        for seg in segment_stream(src, cfg):
            segs.append(seg)
            if len(segs) == n:
                break
    return segs


DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.fixture(scope="module")
def default_backend():
    if not (DEFAULT / "model.gguf").is_file():
        pytest.skip("models/default is not present")
    with LlamaCppBackend(DEFAULT / "model.gguf", DEFAULT / "mmproj.gguf", n_threads=1, n_ctx=2048,
                         image_cache_size=16, seed=0) as b:
        yield b


def test_kv_reuse_and_frame_cache_give_the_same_tokens_as_no_reuse(default_backend, tmp_path):
    from edge_agent.memory.prompts import writer_messages

    b = default_backend
    segs = held_out_segments(tmp_path / "clip")
    sampling = Sampling(**{**GREEDY.__dict__, "max_tokens": 24})
    reused_before, hits_before = b.stats["prompt_tokens_reused"], b.stats["image_cache_hits"]
    windows = [writer_messages("perf", [(s, f"memory {s.index}") for s in segs[start:start + 2]], segs[start + 2])
               for start in range(3)]  # sliding windows: each shares its system prompt and frames with the last
    for i, msgs in enumerate(windows):
        b.generate(windows[i - 1] if i else windows[-1], sampling, SCHEMA)  # leaves a shared prefix in the KV cache
        before = b.stats["prompt_tokens_reused"]
        reused = b.logits(msgs)
        assert b.stats["prompt_tokens_reused"] > before  # the prefix really was reused
        b._clear_kv()
        fresh = b.logits(msgs)  # every token and frame evaluated from scratch
        # equal up to llama.cpp's batching noise (~1e-5); a greedy token may still flip where the model is
        # undecided (this model's colours), so logits, not tokens, are compared
        assert np.abs(reused - fresh).max() < 1e-3
        toks, _ = bare_generate(b, msgs, sampling, SCHEMA)  # llama.cpp alone, no caches
        assert toks, "the bare path generated nothing"
    assert b.stats["image_cache_hits"] > hits_before
    assert b.stats["prompt_tokens_reused"] >= reused_before  # bare_generate resets the KV cache each time
    again = b.generate(windows[0], sampling, SCHEMA)
    assert again.text == b.generate(windows[0], sampling, SCHEMA).text
    assert b.stats["prompt_tokens_reused"] > reused_before


def _text_of_tokens(backend, n: int) -> str:
    """A memory-like text of exactly `n` tokens (the writer's cap is counted with the model's tokenizer)."""
    words = " ".join(["the green mug on the kitchen table"] * n).split()
    lo, hi = 1, len(words)
    while lo < hi:  # the most words whose tokens still fit in n
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if backend.count_tokens(" ".join(words[:mid])) <= n else (lo, mid - 1)
    return " ".join(words[:lo])


def test_auto_context_holds_the_longest_writer_window_and_answer_prompt(default_backend, tmp_path):
    """model.n_ctx = 0 sizes the KV cache from the settings (issue 14: 8,192 -> 2,560 tokens on the default, 17 MB
    of `run`'s peak RSS); the prompts it must hold, at their longest under the same settings, do."""
    from edge_agent.config import load_config
    from edge_agent.memory.prompts import writer_messages
    from edge_agent.qa.answer import build_messages
    from edge_agent.types import Frame, Segment
    from edge_agent.vlm.factory import context_size

    cfg = load_config(tmp_path, environ={})
    assert cfg.model.n_ctx == 0
    n_ctx = context_size(cfg)
    assert 2048 <= n_ctx < 8192 and n_ctx % 256 == 0
    b, cap, side = default_backend, cfg.writer.max_memory_tokens, cfg.capture.frame_size
    memory = _text_of_tokens(b, cap)
    rng = np.random.default_rng(0)

    def segment(i: int) -> Segment:  # square frames: more image tokens than any 4:3 frame of that longest side
        frames = [Frame(i * 10 + k, 10.0 * i + k, rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
                  for k in range(cfg.capture.keyframes_per_segment)]
        return Segment(i, 10.0 * i, 10.0 * i + 10, frames)

    k = cfg.writer.window_segments
    window = writer_messages("ctx", [(segment(i), memory) for i in range(k - 1)], segment(k - 1),
                             retry_note="x " * 40)
    assert len(b.prompt_tokens(window)) + cap <= n_ctx

    memories = [{"id": 100000 + i, "t_start": 36000.0 + i, "t_end": 36010.0 + i, "text": memory}
                for i in range(cfg.qa.top_k)]
    question = "Where did I leave the small green mug that I used in the kitchen this morning before the call?"
    ask = build_messages(question, [f"on the {w} shelf in the living room" for w in ("top", "middle", "low", "side")],
                         memories, 36100.0)
    assert len(b.prompt_tokens(ask)) + 64 <= n_ctx  # the JSON answer with its citations

    # and a smaller context changes nothing the model computes (the fixture's context is 2,048)
    with LlamaCppBackend(DEFAULT / "model.gguf", DEFAULT / "mmproj.gguf", n_threads=1, n_ctx=8192, seed=0) as large:
        assert np.abs(large.logits(window) - b.logits(window)).max() < 1e-3

    bigger = load_config(tmp_path, environ={"EDGE_AGENT_QA__TOP_K": "32"})
    assert context_size(bigger) > n_ctx  # the context grows with what it must hold
    fixed = load_config(tmp_path, environ={"EDGE_AGENT_MODEL__N_CTX": "8192"})
    assert context_size(fixed) == 8192  # an explicit size is kept
