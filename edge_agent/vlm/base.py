"""The backend protocol: what the memory writer, the answerer and Phase Two need from a vision-language model."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from edge_agent.types import Generation, Message, Sampling, SteeringVector


@runtime_checkable
class Backend(Protocol):
    """A loaded Qwen3-VL (or a scripted stand-in in unit tests).

    `model_hash` identifies the full-precision base model (it is what adapters are checked against);
    `model_name` is for display and for the store's `writer_model` column.
    """

    model_name: str
    model_hash: str
    hidden_size: int
    n_layers: int

    def generate(
        self, messages: list[Message], sampling: Sampling, json_schema: dict[str, Any] | None = None
    ) -> Generation:
        """Render the chat, encode its images, decode a reply. With `json_schema`, output is constrained to it."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens `text` takes in this model's vocabulary (no special tokens added)."""
        ...

    def set_steering(self, vector: SteeringVector | None) -> None:
        """Apply (or clear with None) a steering vector without reloading the model."""
        ...

    def close(self) -> None:
        ...
