"""Plain data passed between capture, model backends, the memory writer, the store and QA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded video frame. `t` is seconds on the stream's own clock (0 = stream start)."""

    index: int  # frame number in the source
    t: float
    image: np.ndarray  # H x W x 3, RGB, uint8


@dataclass
class Segment:
    """A fixed-length slice of the stream (10 s by default) and the keyframes chosen from it."""

    index: int  # 0, 1, 2, ... within the stream
    t_start: float
    t_end: float
    keyframes: list[Frame] = field(default_factory=list)
    frames_seen: int = 0  # frames the segmenter looked at
    frames_merged: int = 0  # near-duplicates folded into an earlier keyframe
    frames_dropped: int = 0  # frames lost because the consumer was slower than the source


@dataclass(frozen=True)
class ImagePart:
    """An image inside a prompt. `key` identifies the pixels, so a backend can cache its encoding."""

    key: str
    pixels: np.ndarray  # H x W x 3, RGB, uint8


Part = Union[str, ImagePart]


@dataclass
class Message:
    """One chat turn: role is "system", "user" or "assistant"; parts are text and images in order."""

    role: str
    parts: list[Part]


@dataclass(frozen=True)
class Sampling:
    """Decoding settings. temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 150
    seed: int | None = None


GREEDY = Sampling()
# The paper's sampling for candidate memories.
CANDIDATE_SAMPLING = Sampling(temperature=0.6, top_p=0.95, top_k=20)


@dataclass
class Generation:
    """What a backend returns for one prompt."""

    text: str
    n_prompt_tokens: int
    n_completion_tokens: int
    seconds: float = 0.0


@dataclass
class SteeringVector:
    """The Phase Two adapter: a vector of hidden size added to the output of one transformer layer.

    The applied vector is `scale * vector`. `base_model_hash` names the full-precision checkpoint the
    vector was trained against; backends refuse a vector whose hash or size does not match theirs.
    """

    vector: np.ndarray  # (hidden_size,), float32
    layer: int = 22
    scale: float = 1.0
    base_model_hash: str = ""
    adapter_id: str | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.vector.shape[0])

    def applied(self) -> np.ndarray:
        return (self.scale * self.vector).astype(np.float32)
