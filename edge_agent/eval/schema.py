"""The one question schema every benchmark loader maps to, the streams questions are grouped in, and what a replay returns.

Time is stream seconds throughout (the contract's time model: evaluation replays have origin 0.0, so a memory's
`t_end` in the store is directly comparable with a question's `asked_at`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import QuestionError

LETTERS = ("A", "B", "C", "D")
ABSTAIN = "E"  # the paper's fifth choice: "not in memory"


@dataclass(frozen=True)
class BenchQuestion:
    """One question of a benchmark, asked at one moment of one stream.

    `asked_at` is in stream seconds; `math.inf` means "after the whole stream" (the question may use every memory
    the stream produces). `options` holds the four option texts without their "A. " prefixes, or None for an
    open-ended question; `answer` is then a letter A-D, else the reference answer text a judge compares with.
    `evidence` is the (t_start, t_end) span in stream seconds where the answer can be seen, when the benchmark says.
    """

    id: str
    benchmark: str
    video: str  # key of the stream (BenchItem.key) the question belongs to
    asked_at: float
    question: str
    options: tuple[str, ...] | None
    answer: str
    category: str
    evidence: tuple[float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise QuestionError(f"question {self.benchmark}/{self.id}: empty question text")
        if math.isnan(self.asked_at) or self.asked_at < 0:
            raise QuestionError(f"question {self.benchmark}/{self.id}: asked_at={self.asked_at!r} must be >= 0")
        if self.options is not None:
            if len(self.options) != len(LETTERS):
                raise QuestionError(f"question {self.benchmark}/{self.id}: {len(self.options)} options, expected 4")
            if self.answer not in LETTERS:
                raise QuestionError(f"question {self.benchmark}/{self.id}: answer={self.answer!r} is not one of A-D")
        elif not self.answer.strip():
            raise QuestionError(f"question {self.benchmark}/{self.id}: open-ended question without a reference answer")

    @property
    def is_multiple_choice(self) -> bool:
        return self.options is not None

    def lettered_options(self) -> list[str]:
        """Options as the answerer shows them: ["A. ...", "B. ...", "C. ...", "D. ..."] ([] when open-ended)."""
        return [f"{letter}. {text}" for letter, text in zip(LETTERS, self.options or ())]


@dataclass(frozen=True)
class VideoPiece:
    """One video file of a stream and the stream second at which it starts (EgoLife days come in 30 s files)."""

    path: Path
    offset: float = 0.0


@dataclass
class BenchItem:
    """One stream to replay: its video file(s) in order and its questions sorted by the time they are asked."""

    key: str
    pieces: list[VideoPiece]
    questions: list[BenchQuestion]
    duration: float | None = None  # stream seconds covered by the pieces, when known
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pieces = sorted(self.pieces, key=lambda p: p.offset)
        self.questions = sorted(self.questions, key=lambda q: (q.asked_at, q.id))


@dataclass
class Benchmark:
    """A loaded benchmark: its streams in replay order. `skipped` names what the loader left out and why."""

    name: str
    items: list[BenchItem]
    root: Path | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def questions(self) -> list[BenchQuestion]:
        return [q for item in self.items for q in item.questions]

    @property
    def n_questions(self) -> int:
        return sum(len(item.questions) for item in self.items)

    @property
    def has_open_ended(self) -> bool:
        return any(not q.is_multiple_choice for q in self.questions)

    def limit(self, max_questions: int | None = None, max_streams: int | None = None) -> "Benchmark":
        """A smaller copy for quick runs: the first streams, and at most `max_questions` questions in all."""
        items: list[BenchItem] = []
        left = math.inf if max_questions is None else max_questions
        for item in self.items[: max_streams if max_streams is not None else None]:
            if left <= 0:
                break
            take = item.questions[: int(min(left, len(item.questions)))]
            left -= len(take)
            items.append(BenchItem(item.key, list(item.pieces), take, item.duration, dict(item.meta)))
        return Benchmark(self.name, items, self.root, list(self.skipped))


@dataclass
class Answer:
    """What a config's answerer said, as the replay driver needs it.

    `choice` is A-E for multiple choice (E = "not in memory"), None for open-ended; `memory_t_ends` are the stream
    times at which the memories shown to the answerer end, so the driver can prove none came from the future.
    """

    choice: str | None
    text: str
    abstained: bool
    memory_t_ends: list[float] = field(default_factory=list)
    answer_id: int | None = None
    seconds: float = 0.0


@dataclass
class StreamStats:
    """What one config wrote for one stream: memory text size, video covered, write latency per segment."""

    memory_bytes: int = 0  # UTF-8 bytes of all memory texts written for the stream
    n_memories: int = 0
    n_segments: int = 0  # segments committed (written or failed)
    video_seconds: float = 0.0  # stream seconds ingested
    write_latencies: list[float] = field(default_factory=list)  # seconds per segment
