"""ScriptedBackend: a stand-in for the model in UNIT TESTS of the code around it (writer, QA, adapt, runtime).

It never loads a model and never is a default anywhere: nothing in the package constructs it. It returns queued
replies (or the result of a function of the call), records every call, counts tokens roughly (words and
punctuation), and keeps the same steering-vector bookkeeping and checks as the real backend.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Union

from edge_agent.types import Generation, ImagePart, Message, Sampling, SteeringVector
from edge_agent.vlm.steering import check_compatible


@dataclass
class ScriptedCall:
    """One `generate` call as the backend saw it; `prompt` is `render_text(messages)`."""

    messages: list[Message]
    sampling: Sampling
    json_schema: dict[str, Any] | None
    steering: SteeringVector | None
    prompt: str = ""
    reply: str = ""


Reply = Union[str, Callable[[ScriptedCall], str]]


def render_text(messages: list[Message]) -> str:
    """The chat as text in the Qwen format, each image shown as `<image:KEY>` (for assertions in tests)."""
    out = []
    for m in messages:
        body = "".join(p if isinstance(p, str) else f"<image:{p.key}>" for p in m.parts)
        out.append(f"<|im_start|>{m.role}\n{body}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def rough_token_count(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


@dataclass
class ScriptedBackend:
    """Backend protocol implementation for tests.

    `replies`: strings returned in order, or one callable `f(call) -> str` used for every call (a callable inside
    the queue is used once). Running out of replies raises AssertionError: the test scripted too few.
    `logprobs`: `f(messages, text) -> [(piece, logprob), ...]` for `continuation_logprobs` (likelihood answering).
    """

    replies: Union[Iterable[Reply], Callable[[ScriptedCall], str]] = ()
    model_name: str = "scripted"
    model_hash: str = "scripted-base-model"
    hidden_size: int = 64
    n_layers: int = 24
    calls: list[ScriptedCall] = field(default_factory=list)
    steering: SteeringVector | None = None
    steering_history: list[SteeringVector | None] = field(default_factory=list)
    closed: bool = False
    logprobs: Callable[[list[Message], str], list[tuple[str, float]]] | None = None

    def __post_init__(self) -> None:
        self._fn = self.replies if callable(self.replies) else None
        self._queue: deque[Reply] = deque() if self._fn else deque(self.replies)  # type: ignore[arg-type]

    def queue(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    def generate(self, messages: list[Message], sampling: Sampling,
                 json_schema: dict[str, Any] | None = None) -> Generation:
        assert not self.closed, "ScriptedBackend used after close()"
        start = time.perf_counter()
        call = ScriptedCall(list(messages), sampling, json_schema, self.steering, render_text(messages))
        if self._fn is not None:
            reply = self._fn(call)
        else:
            assert self._queue, f"ScriptedBackend: no scripted reply left for call {len(self.calls) + 1}"
            nxt = self._queue.popleft()
            reply = nxt(call) if callable(nxt) else nxt
        call.reply = reply
        self.calls.append(call)
        n_images = sum(isinstance(p, ImagePart) for m in messages for p in m.parts)
        n_prompt = rough_token_count(call.prompt) + 16 * n_images
        return Generation(text=reply, n_prompt_tokens=n_prompt, n_completion_tokens=rough_token_count(reply),
                          seconds=time.perf_counter() - start)

    @property
    def scores_continuations(self) -> bool:
        return self.logprobs is not None

    def continuation_logprobs(self, messages: list[Message], text: str) -> list[tuple[str, float]]:
        assert not self.closed, "ScriptedBackend used after close()"
        assert self.logprobs is not None, "ScriptedBackend: no `logprobs` scripted for continuation_logprobs"
        return self.logprobs(list(messages), text)

    def count_tokens(self, text: str) -> int:
        return rough_token_count(text)

    def set_steering(self, vector: SteeringVector | None) -> None:
        if vector is not None:
            check_compatible(vector, hidden_size=self.hidden_size, n_layers=self.n_layers,
                             base_model_hash=self.model_hash)
        self.steering = vector
        self.steering_history.append(vector)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> "ScriptedBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
