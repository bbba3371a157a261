"""MemoryWriter: one validated memory per new segment, with bounded retries and a recorded failure reason."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from edge_agent.config import WriterConfig
from edge_agent.memory.prompts import writer_messages
from edge_agent.memory.validate import MEMORY_SCHEMA, Validation, validate_memory
from edge_agent.types import CANDIDATE_SAMPLING, GREEDY, Message, Sampling, Segment
from edge_agent.vlm.base import Backend

# Room for the JSON wrapper around the description, on top of the memory token cap.
_JSON_OVERHEAD_TOKENS = 16


@dataclass
class WindowEntry:
    """A segment in the writer's window and the memory written for it (None: unwritten or not yet)."""

    segment: Segment
    memory: str | None = None


@dataclass
class WriteResult:
    text: str | None  # the memory, or None when every attempt failed validation
    failure: str | None
    n_tokens: int
    attempts: int
    seconds: float
    raw: list[str] = field(default_factory=list)  # every model reply, for debugging and Phase Two


class MemoryWriter:
    def __init__(self, backend: Backend, cfg: WriterConfig, stream_key: str = "stream"):
        self.backend = backend
        self.cfg = cfg
        self.stream_key = stream_key

    def _earlier(self, context: Sequence[WindowEntry]) -> Sequence[WindowEntry]:
        """The window is k segments including the new one: keep the k-1 most recent earlier ones."""
        k = self.cfg.window_segments - 1
        return context[-k:] if k > 0 else []

    def _ask(self, context: Sequence[WindowEntry], new: Segment, sampling: Sampling,
             retry_note: str | None) -> tuple[str, Validation]:
        messages = writer_messages(self.stream_key, [(e.segment, e.memory) for e in context], new, retry_note)
        return self._generate(messages, sampling)

    def _generate(self, messages: list[Message], sampling: Sampling) -> tuple[str, Validation]:
        sampling = Sampling(sampling.temperature, sampling.top_p, sampling.top_k,
                            self.cfg.max_memory_tokens + _JSON_OVERHEAD_TOKENS, sampling.seed)
        gen = self.backend.generate(messages, sampling, json_schema=MEMORY_SCHEMA)
        return gen.text, validate_memory(gen.text, self.backend.count_tokens, self.cfg.max_memory_tokens)

    def greedy_check(self, messages: list[Message]) -> Validation:
        """One greedy memory for a ready-made prompt, validated (Phase Two's format-compliance gate)."""
        return self._generate(messages, GREEDY)[1]

    def sample_messages(self, messages: list[Message], n: int, seed: int = 0) -> list[tuple[str, Validation]]:
        """`n` sampled memories for a ready-made prompt (a window rebuilt from kept frames)."""
        return [self._generate(messages, Sampling(**{**CANDIDATE_SAMPLING.__dict__, "seed": seed + i}))
                for i in range(n)]

    def write(self, context: Sequence[WindowEntry], new: Segment) -> WriteResult:
        """Greedy first; each retry samples (a greedy re-ask would repeat itself) and says what was wrong. A reply
        whose one fault is saying its sentence twice is stored with the sentence once, not re-asked: the embedded
        default, asked again with the reason in its prompt (which it never saw in training), wrote fragments such as
        'IN 8015".' for 4 of 1,264 dev memories."""
        start = time.perf_counter()
        raws: list[str] = []
        note: str | None = None
        result: Validation | None = None
        for attempt in range(self.cfg.max_retries + 1):
            sampling = GREEDY if attempt == 0 else Sampling(**{**CANDIDATE_SAMPLING.__dict__, "seed": attempt})
            raw, result = self._ask(self._earlier(context), new, sampling, note)
            raws.append(raw)
            result = result.said_once or result
            if result.ok:
                return WriteResult(result.description, None, result.n_tokens, attempt + 1,
                                   time.perf_counter() - start, raws)
            note = result.failure
        assert result is not None
        return WriteResult(None, result.failure, 0, len(raws), time.perf_counter() - start, raws)

    def sample_candidates(self, context: Sequence[WindowEntry], new: Segment, n: int,
                          seed: int = 0) -> list[tuple[str, Validation]]:
        """Alternative memories for the same window (paper: T 0.6, top_p 0.95, top_k 20), kept for Phase Two."""
        earlier = self._earlier(context)
        messages = writer_messages(self.stream_key, [(e.segment, e.memory) for e in earlier], new)
        return self.sample_messages(messages, n, seed)
