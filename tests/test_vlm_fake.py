"""ScriptedBackend: queued replies, reply functions, call records, steering bookkeeping and checks."""

import numpy as np
import pytest

from edge_agent.errors import AdapterError
from edge_agent.types import CANDIDATE_SAMPLING, GREEDY, ImagePart, Message, SteeringVector
from edge_agent.vlm.base import Backend
from edge_agent.vlm.fake import ScriptedBackend, render_text


def _msgs(text="hello there"):
    img = ImagePart("f1", np.zeros((32, 32, 3), np.uint8))
    return [Message("system", ["be brief"]), Message("user", [img, text])]


def test_queue_and_records():
    b = ScriptedBackend(['{"description": "a cup."}', "second"])
    assert isinstance(b, Backend)
    g = b.generate(_msgs(), GREEDY, {"type": "object"})
    assert g.text == '{"description": "a cup."}' and g.n_completion_tokens == 11
    assert b.generate(_msgs("x"), CANDIDATE_SAMPLING).text == "second"
    assert [c.sampling for c in b.calls] == [GREEDY, CANDIDATE_SAMPLING]
    assert b.calls[0].json_schema == {"type": "object"}
    assert b.calls[0].prompt == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n<image:f1>hello there"
                                 "<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(AssertionError, match="no scripted reply left"):
        b.generate(_msgs(), GREEDY)


def test_reply_function_sees_steering():
    b = ScriptedBackend(lambda call: "steered" if call.steering is not None else "plain", hidden_size=8,
                        n_layers=24, model_hash="h")
    assert b.generate(_msgs(), GREEDY).text == "plain"
    v = SteeringVector(np.ones(8, np.float32), layer=22, base_model_hash="h")
    b.set_steering(v)
    assert b.generate(_msgs(), GREEDY).text == "steered"
    b.set_steering(None)
    assert b.generate(_msgs(), GREEDY).text == "plain"
    assert b.steering_history == [v, None]


def test_steering_checks_like_the_real_backend():
    b = ScriptedBackend(hidden_size=8, model_hash="h")
    with pytest.raises(AdapterError, match="hidden size 4"):
        b.set_steering(SteeringVector(np.ones(4, np.float32), base_model_hash="h"))
    with pytest.raises(AdapterError, match="base model hash"):
        b.set_steering(SteeringVector(np.ones(8, np.float32), base_model_hash="other"))
    assert b.steering is None and b.steering_history == []


def test_render_text_and_count():
    assert render_text([Message("user", ["a", ImagePart("k", np.zeros((1, 1, 3), np.uint8))])]).count("<image:k>") == 1
    assert ScriptedBackend().count_tokens("two words.") == 3
