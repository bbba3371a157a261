"""What Phase Two trains in torch is what the writer runs in llama.cpp: same token ids, same logits (with and
without the vector), and a trained vector shifts llama.cpp's generation toward the preferred memory."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

from adapt_support import OBJECTS, one_torch_thread, window_prompt  # noqa: E402

from edge_agent.config import AdaptConfig  # noqa: E402
from edge_agent.adapt.dpo import PreferencePair, completion_text, prepare_pairs, train_vector  # noqa: E402,E501
from edge_agent.types import Message, Sampling, SteeringVector  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def policy(tiny_model):
    from edge_agent.adapt.frozen_model import FrozenQwen3VL

    return FrozenQwen3VL(tiny_model / "hf", layer=22)


@pytest.fixture
def backend(tiny_backend):
    tiny_backend.set_steering(None)
    yield tiny_backend
    tiny_backend.set_steering(None)


def _hf_next_logits(policy, messages, vector=None):
    enc = policy.encode(messages, "x")
    handle = None
    if vector is not None:
        v = torch.as_tensor(vector)
        handle = policy.layers[policy.layer].register_forward_hook(lambda mod, args, out: out + v)
    try:
        with torch.no_grad():
            every_position = {**policy._model_inputs(enc), "logits_to_keep": 0}
            out = policy.model(**every_position).logits[0, enc.completion_start - 1]
    finally:
        if handle is not None:
            handle.remove()
    return out.numpy()


@pytest.mark.parametrize("n_frames", [0, 1, 2, 3, 4])
def test_prompt_ids_match_backend(policy, backend, n_frames):
    """Includes merged temporal pairs (2 and 4 frames: 1 and 2 chunks; 3 frames: a pair and a single)."""
    msgs = window_prompt(1, n_frames, with_images=n_frames > 0)
    enc = policy.encode(msgs, '{"description": "x"}')
    ids = [-1 if t == policy.encoder.image_pad else t for t in enc.input_ids[0, :enc.completion_start].tolist()]
    assert ids == backend.prompt_tokens(msgs)


def test_message_text_is_not_parsed_for_special_tokens(policy, backend):
    msgs = [Message("user", ["a memory said <|im_end|> here", " and ", "more"])]
    enc = policy.encode(msgs, "x")
    assert enc.input_ids[0, :enc.completion_start].tolist() == backend.prompt_tokens(msgs)


def test_completion_logp_from_the_kept_logits_equals_the_one_from_every_position(policy):
    """Phase Two keeps logits only where the completion is predicted (memory: T x vocab otherwise)."""
    enc = policy.encode(window_prompt(2, 2), '{"description": "I sat."}')
    with torch.no_grad():
        every = policy.model(**{**policy._model_inputs(enc), "logits_to_keep": 0}).logits[0]
        kept = policy.model(**policy._model_inputs(enc)).logits[0]
        targets = enc.input_ids[0, enc.completion_start:]
        ref = torch.log_softmax(every[enc.completion_start - 1:-1].float(), -1).gather(1, targets[:, None]).sum()
        assert kept.shape[0] == enc.n_completion + 1 < every.shape[0]
        assert float(policy.full_logp(enc, None)) == pytest.approx(float(ref), rel=1e-6)


def test_next_token_logits_match_backend_with_and_without_vector(policy, backend):
    msgs = window_prompt(2, 4)
    v = (0.5 * np.random.RandomState(0).randn(policy.hidden_size)).astype(np.float32)
    base = backend.logits(msgs)
    np.testing.assert_allclose(base, _hf_next_logits(policy, msgs), atol=1e-3)
    backend.set_steering(SteeringVector(v, 22, 1.0, backend.model_hash))
    steered = backend.logits(msgs)
    np.testing.assert_allclose(steered, _hf_next_logits(policy, msgs, v), atol=1e-3)
    assert np.abs(steered - base).max() > 1e-2  # the vector does something


@pytest.mark.slow
def test_trained_vector_shifts_llama_cpp_generation(policy, backend):
    """Chosen memories name the place. Trained with the paper's defaults on 8 windows, the vector applied by
    llama.cpp makes greedy decoding, constrained to the two memories of 8 unseen windows, pick the place more."""
    objs = OBJECTS + ["lamp", "pen", "book", "shoes", "coat", "bottle"]
    pairs = [PreferencePair(window_prompt(i, 2), completion_text(f"I saw the {o} on the shelf."),
                            completion_text(f"I saw the {o}."), i) for i, o in enumerate(objs[:8])]
    res = train_vector(policy, prepare_pairs(policy, pairs), AdaptConfig(), base_model_hash=backend.model_hash)

    def shelf_share(vec):
        backend.set_steering(vec)
        n = 0
        for i in range(8, len(objs)):
            o = objs[i]
            schema = {"type": "object", "additionalProperties": False, "required": ["description"],
                      "properties": {"description": {"type": "string",
                                                     "enum": [f"I saw the {o} on the shelf.", f"I saw the {o}."]}}}
            n += "shelf" in backend.generate(window_prompt(i, 2), Sampling(max_tokens=40), json_schema=schema).text
        return n / (len(objs) - 8)

    before, after = shelf_share(None), shelf_share(res.vector)
    assert after > before, (before, after)
    assert after == 1.0
