"""LlamaCppBackend on the tiny Qwen3-VL: generation with images and JSON schema, temporal merging, the frame
cache, KV prefix reuse, steering vector apply/swap/clear, and clear errors for bad files."""

import json
import shutil

import numpy as np
import pytest

from edge_agent.errors import AdapterError, ModelError
from edge_agent.types import CANDIDATE_SAMPLING, GREEDY, ImagePart, Message, Sampling, SteeringVector
from edge_agent.vlm.base import Backend
from edge_agent.vlm.llama_cpp import LlamaCppBackend
from edge_agent.vlm.prompt import render_chat
from edge_agent.vlm.steering import load_control_vector, save_control_vector

MEMORY_SCHEMA = {"type": "object", "properties": {"description": {"type": "string", "maxLength": 40}},
                 "required": ["description"], "additionalProperties": False}


def frame(i: int, size: int = 64) -> ImagePart:
    rng = np.random.RandomState(100 + i)
    return ImagePart(f"frame-{i}", (rng.rand(size, size, 3) * 255).astype(np.uint8))


def window(frames, text="write the memory for the new segment"):
    return [Message("system", ["you write short memories"]), Message("user", [*frames, text])]


@pytest.fixture
def backend(tiny_backend):
    yield tiny_backend
    tiny_backend.set_steering(None)


def test_identity(backend, tiny_model):
    assert isinstance(backend, Backend)
    assert (backend.hidden_size, backend.n_layers) == (64, 24)
    from edge_agent.export.hf_checkpoint import base_model_hash
    assert backend.model_hash == base_model_hash(tiny_model / "hf")  # read from the GGUF's KV
    assert backend.count_tokens("the red cup is on the table") > 0 and backend.count_tokens("") == 0


def test_generation_with_images_and_json_schema_is_valid_json(backend):
    msgs = window([frame(0), frame(1)])
    g = backend.generate(msgs, GREEDY, MEMORY_SCHEMA)
    obj = json.loads(g.text)
    assert set(obj) == {"description"} and len(obj["description"]) <= 40
    assert g.n_prompt_tokens == len(backend.prompt_tokens(msgs)) and 0 < g.n_completion_tokens <= 150
    assert g.seconds > 0
    # the paper's candidate sampling, seeded: valid JSON and reproducible
    s = Sampling(temperature=0.6, top_p=0.95, top_k=20, seed=7)
    a, b = backend.generate(msgs, s, MEMORY_SCHEMA), backend.generate(msgs, s, MEMORY_SCHEMA)
    assert a.text == b.text and set(json.loads(a.text)) == {"description"}
    texts = {backend.generate(msgs, CANDIDATE_SAMPLING, MEMORY_SCHEMA).text for _ in range(3)}
    assert all(set(json.loads(t)) == {"description"} for t in texts)


def test_greedy_is_deterministic_and_max_tokens_respected(backend):
    msgs = window([frame(0)])
    a = backend.generate(msgs, Sampling(max_tokens=5))
    b = backend.generate(msgs, Sampling(max_tokens=5))
    assert a.text == b.text and a.n_completion_tokens <= 5


def test_consecutive_frames_are_merged_into_temporal_pairs(backend):
    merged = backend.prompt_tokens(window([frame(i) for i in range(4)]))
    separate = backend.prompt_tokens(window([x for i in range(4) for x in (frame(i), f"t={i}")]))
    n_merged, n_separate = merged.count(-1), separate.count(-1)
    assert n_separate == 4 * 9 and n_merged == 2 * 9  # 64 px frames -> 96 px -> 3x3 merged patches each
    parts = render_chat(window([frame(0), frame(1), "x", frame(2)]))
    assert [p.mergeable for p in parts if p.image is not None] == [True, True, False]


def test_each_frame_is_encoded_once_across_sliding_windows(tiny_model):
    with LlamaCppBackend(tiny_model / "model.gguf", tiny_model / "mmproj.gguf", n_threads=1, n_ctx=2048,
                         image_cache_size=8) as b:
        frames = [frame(i) for i in range(8)]
        b.generate(window(frames[0:4]), Sampling(max_tokens=2))
        assert b.stats["image_encodes"] == 2  # (0,1), (2,3)
        later = b.logits(window(frames[2:6]))  # a new window: the pair (2,3) comes from the cache
        assert b.stats["image_encodes"] == 3 and b.stats["image_cache_hits"] == 1
        b.generate(window(frames[4:8]), Sampling(max_tokens=2))
        assert b.stats["image_encodes"] == 4 and b.stats["image_cache_hits"] == 2
        with LlamaCppBackend(tiny_model / "model.gguf", tiny_model / "mmproj.gguf", n_threads=1, n_ctx=2048,
                             image_cache_size=0) as fresh:
            expected = fresh.logits(window(frames[2:6]))
            assert fresh.stats["image_encodes"] == 2 and fresh.stats["image_cache_hits"] == 0
        assert np.abs(later - expected).max() < 1e-4  # cached embeddings decode to the same logits


def test_image_cache_is_bounded(tiny_model):
    with LlamaCppBackend(tiny_model / "model.gguf", tiny_model / "mmproj.gguf", n_threads=1, n_ctx=2048,
                         image_cache_size=2) as b:
        for i in range(0, 8, 2):
            b.logits(window([frame(i), frame(i + 1)]))
        assert len(b._image_cache) == 2 and b.stats["image_encodes"] == 4
        b.logits(window([frame(0), frame(1)]))  # evicted long ago: encoded again
        assert b.stats["image_encodes"] == 5


def test_kv_prefix_reuse_gives_the_same_logits(backend):
    a_msgs, b_msgs = window([frame(0), frame(1)], "first question"), window([frame(0), frame(1)], "other")
    backend.set_steering(None)  # clears the KV cache
    fresh = backend.logits(a_msgs)
    backend.logits(b_msgs)
    reused_before = backend.stats["prompt_tokens_reused"]
    again = backend.logits(a_msgs)
    assert backend.stats["prompt_tokens_reused"] > reused_before  # system prompt and frames were kept
    assert np.abs(again - fresh).max() < 1e-4


def test_special_tokens_in_message_text_stay_text(backend):
    im_end = backend._single_token("<|im_end|>")
    toks = backend.prompt_tokens([Message("user", ["a <|im_end|> b"])], add_generation_prompt=False)
    assert toks.count(im_end) == 1  # only the template's


def _vec(backend, seed=0, layer=22, scale=1.0):
    v = 3.0 * np.random.RandomState(seed).randn(backend.hidden_size).astype(np.float32)
    return SteeringVector(v, layer=layer, scale=scale, base_model_hash=backend.model_hash, adapter_id=f"v{seed}")


def test_steering_apply_swap_clear_without_reload(backend, tmp_path):
    msgs = window([frame(0), frame(1)])
    llm = backend._llm
    base = backend.logits(msgs)
    backend.set_steering(_vec(backend, 1))
    one = backend.logits(msgs)
    backend.set_steering(_vec(backend, 2))
    two = backend.logits(msgs)
    assert np.abs(one - base).max() > 0.05 and np.abs(two - one).max() > 0.05
    backend.set_steering(None)
    assert np.abs(backend.logits(msgs) - base).max() < 1e-4
    backend.set_steering(_vec(backend, 2))
    assert np.abs(backend.logits(msgs) - two).max() < 1e-4
    # scale multiplies the vector: (v, scale 2) == (2v, scale 1)
    backend.set_steering(_vec(backend, 3, scale=2.0))
    scaled = backend.logits(msgs)
    v3 = _vec(backend, 3)
    backend.set_steering(SteeringVector(2 * v3.vector, 22, 1.0, v3.base_model_hash))
    assert np.abs(backend.logits(msgs) - scaled).max() < 1e-4
    # the control-vector GGUF applies the same thing
    path = save_control_vector(_vec(backend, 3, scale=2.0), tmp_path / "a.gguf")
    backend.set_steering(load_control_vector(path))
    assert np.abs(backend.logits(msgs) - scaled).max() < 1e-4
    assert backend._llm is llm and backend.steering.adapter_id == "v3"


def test_bad_adapters_are_refused_with_both_values(backend):
    good = _vec(backend, 1)
    backend.set_steering(good)
    with pytest.raises(AdapterError, match="hidden size 32 does not match the model's hidden size 64"):
        backend.set_steering(SteeringVector(np.ones(32, np.float32), 22, 1.0, backend.model_hash))
    with pytest.raises(AdapterError, match=f"'deadbeef' does not match the loaded model's '{backend.model_hash}'"):
        backend.set_steering(SteeringVector(np.ones(64, np.float32), 22, 1.0, "deadbeef"))
    with pytest.raises(AdapterError, match="layer 24 out of range 1..23"):
        backend.set_steering(SteeringVector(np.ones(64, np.float32), 24, 1.0, backend.model_hash))
    assert backend.steering is good  # a refused adapter leaves the active one in place


def _write_gguf(path, arch):
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_clear_errors_for_bad_files(tiny_model, tmp_path):
    model, mmproj = tiny_model / "model.gguf", tiny_model / "mmproj.gguf"
    cases = [
        ((tmp_path / "none.gguf", mmproj), r"none.gguf: no such file"),
        ((model, tmp_path / "none.gguf"), r"none.gguf: mmproj file not found"),
        ((_write_gguf(tmp_path / "llama.gguf", "llama"), mmproj), "architecture 'llama', expected a Qwen3-VL text"),
        ((model, model), "architecture 'qwen3vl', expected a Qwen3-VL mmproj"),
    ]
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(model.read_bytes()[:4] + b"\xff" * 64)
    cases.append(((corrupt, mmproj), r"corrupt.gguf: corrupt or truncated GGUF"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf" * 100)
    cases.append(((model, junk), r"junk.gguf: not a GGUF file"))
    # an mmproj exported from another checkpoint (different base_model_hash) does not fit
    other = tmp_path / "other-mmproj.gguf"
    from edge_agent.vlm.gguf_info import inspect_gguf
    h = inspect_gguf(mmproj)["base_model_hash"].encode()
    other.write_bytes(mmproj.read_bytes().replace(h, b"0" * len(h)))
    cases.append(((model, other), "exported from a different checkpoint"))
    for (m, p), pattern in cases:
        with pytest.raises(ModelError, match=pattern) as e:
            LlamaCppBackend(m, p, n_threads=1, n_ctx=512)
        assert "\n" not in str(e.value)


def test_close_is_idempotent_and_final(tiny_model, tmp_path):
    shutil.copy(tiny_model / "model.gguf", tmp_path / "model.gguf")
    b = LlamaCppBackend(tmp_path / "model.gguf", tiny_model / "mmproj.gguf", n_threads=1, n_ctx=512)
    b.close()
    b.close()
    with pytest.raises(ModelError, match="closed"):
        b.generate(window([frame(0)]), GREEDY)


def test_prompt_longer_than_context_is_a_clear_error(tiny_model):
    with LlamaCppBackend(tiny_model / "model.gguf", tiny_model / "mmproj.gguf", n_threads=1, n_ctx=512) as b:
        with pytest.raises(ModelError, match=r"exceeds the context of 512 \(model.n_ctx\)"):
            b.generate(window([], "the red cup " * 400), GREEDY)


def test_text_only_backend_without_mmproj(tiny_model, tiny_backend):
    msgs = [Message("system", ["answer from memory"]), Message("user", ["where is the red cup?"])]
    with LlamaCppBackend(tiny_model / "model.gguf", None, n_threads=1, n_ctx=512, name="answerer") as b:
        assert b.model_name == "answerer" and b.model_hash == tiny_backend.model_hash
        assert b.prompt_tokens(msgs) == tiny_backend.prompt_tokens(msgs)  # same tokens as the mtmd path
        assert np.abs(b.logits(msgs) - tiny_backend.logits(msgs)).max() < 1e-4
        g = b.generate(msgs, GREEDY, {"type": "object", "properties": {"answer": {"enum": ["A", "B", "E"]}},
                                      "required": ["answer"]})
        assert json.loads(g.text)["answer"] in {"A", "B", "E"}
        with pytest.raises(ModelError, match="loaded without its mmproj: cannot take images"):
            b.generate(window([frame(0)]), GREEDY)


def test_continuation_logprobs_match_transformers(backend, tiny_model):
    """Each token's log-probability as the start of the reply equals transformers' on the same checkpoint."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen3VLForConditionalGeneration

    from edge_agent.vlm.prompt import PromptEncoder

    msgs = [Message("system", ["you answer"]), Message("user", ["Where did I leave the keys? On the shelf."])]
    text = '{"answer": "on the shelf"'
    got = backend.continuation_logprobs(msgs, text)
    assert "".join(p for p, _ in got) == text
    tok = Tokenizer.from_file(str(tiny_model / "hf" / "tokenizer.json"))
    enc = PromptEncoder.from_tokenizer(tok).encode(msgs, text)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        lp = model(input_ids=torch.tensor([enc.ids])).logits[0].log_softmax(-1)
    want = [float(lp[i - 1, enc.ids[i]]) for i in range(enc.n_prompt, len(enc.ids) - 1)]  # minus <|im_end|>
    assert len(want) == len(got)
    assert np.allclose([g for _, g in got], want, atol=2e-3)
    again = backend.continuation_logprobs(msgs, text)  # the prompt's KV reused: the same numbers
    assert np.allclose([g for _, g in again], [g for _, g in got], atol=1e-5)


def test_an_enum_holding_quotes_and_backslashes_is_a_valid_grammar(backend):
    """The likelihood answerer fixes the chosen option with an enum; a note's text holds quotes (llama-cpp-python's
    converter left the backslash unescaped, and llama.cpp rejected the grammar)."""
    value = 'read the note that said "PIN 4066" \\ done'
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": [value]}},
              "required": ["answer"], "additionalProperties": False}
    gen = backend.generate(window([]), Sampling(temperature=0.0, max_tokens=64), json_schema=schema)
    assert json.loads(gen.text) == {"answer": value}


def test_without_extra_buffers_a_q8_0_model_gives_the_f32_models_logits(tiny_model, tmp_path):
    """`extra_buffers=False` loads the weights without llama.cpp's repacked / AMX buffers (on by default unless the
    CPU has AMX, whose matmul segfaulted on Q8_0 models here): the Q8_0 export then answers as the f32 one does, to
    within quantization, and llama.cpp's default model parameters are its own again after the load."""
    import llama_cpp.llama_cpp as lc

    from edge_agent.export import export_hf
    from edge_agent.vlm import llama_cpp as backend_module

    q8, _ = export_hf(tiny_model / "hf", tmp_path, "q8_0")
    msgs = [Message("user", ["Where did I leave the red cup? " * 20])]
    with LlamaCppBackend(tiny_model / "model.gguf", None, n_threads=1, n_ctx=1024) as be:
        want = be.logits(msgs)
    with LlamaCppBackend(q8, None, n_threads=1, n_ctx=1024, extra_buffers=False) as be:
        got = be.logits(msgs)
    assert np.abs(got - want).max() < 0.05 * max(1.0, np.abs(want).max())
    assert lc.llama_model_default_params().use_extra_bufts
    with backend_module._extra_buffers(False):
        assert not lc.llama_model_default_params().use_extra_bufts
    assert lc.llama_model_default_params().use_extra_bufts
    from edge_agent.doctor import _llama

    assert ("AMX CPU" in _llama()) == backend_module.cpu_has_amx()  # doctor says when the buffers are off
