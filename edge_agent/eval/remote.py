"""An OpenAI-compatible model as the answerer of `eval` (GPT-4o in the paper), local by default.

Only `eval` uses it, only when the user names `--answerer-url`: the questions and the memories shown go to
that endpoint. It implements the part of the Backend protocol the answerer uses (`generate`, text only).
"""

from __future__ import annotations

import time
from typing import Any

from edge_agent.eval.grading import OpenAIChat
from edge_agent.types import Generation, ImagePart, Message, Sampling


class OpenAIAnswerer(OpenAIChat):
    role = "answerer"

    @property
    def model_name(self) -> str:
        return self.judge_id

    def generate(self, messages: list[Message], sampling: Sampling, json_schema: dict[str, Any] | None = None,
                 **_: Any) -> Generation:
        start = time.perf_counter()
        chat = []
        for m in messages:
            if any(isinstance(p, ImagePart) for p in m.parts):
                raise ValueError("the remote answerer is text-only: answers come from memories, never frames")
            chat.append({"role": m.role, "content": "".join(m.parts)})
        text = self.chat(chat, json_mode=json_schema is not None, max_tokens=sampling.max_tokens or None)
        return Generation(text, 0, 0, time.perf_counter() - start)

    def set_steering(self, vector) -> None:
        if vector is not None:
            raise ValueError("the remote answerer cannot be steered (only the writer is)")
