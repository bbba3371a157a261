"""The runtime-backed ReplayTarget: replays a benchmark stream through the same Ingestor and answerer as `run`/`ask`.

One store per (config, stream), so configs never see each other's memories and a stream's questions see only
that stream's memories. A stream of several pieces (EgoLife's 30 s files) is ingested piece after piece with
origin = the piece's offset, so memory times are stream seconds and comparable with `asked_at`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from edge_agent.config import Config
from edge_agent.eval.replay import replay
from edge_agent.eval.schema import Answer, BenchItem, BenchQuestion, StreamStats
from edge_agent.types import SteeringVector
from edge_agent.vlm.base import Backend


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]


class RuntimeTarget:
    """One config under evaluation: a name, an optional pinned adapter, its own stores under `work_dir`."""

    def __init__(self, name: str, adapter_id: str | None, vector: SteeringVector | None, backend: Backend,
                 cfg: Config, work_dir: Path, embedder: Any = None, answerer: Any = None):
        self.name = name
        # who answers: the device's own model (default) or an OpenAI-compatible one (eval/remote.py)
        self.answerer = answerer if answerer is not None else backend
        self.adapter_id = adapter_id
        self.vector = vector
        self.backend = backend
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.embedder = embedder
        self._stores: dict[str, Any] = {}
        self._progress: dict[str, tuple[int, Any]] = {}  # stream key -> (piece index, open Ingestor or None)
        self._latencies: dict[str, list[float]] = {}
        self._video_seconds: dict[str, float] = {}

    def _store(self, stream: BenchItem):
        from edge_agent.store import Store

        if stream.key not in self._stores:
            self._stores[stream.key] = Store.open(self.work_dir / _safe(self.name) / f"{_safe(stream.key)}.db")
        return self._stores[stream.key]

    def ingest_until(self, stream: BenchItem, t: float) -> None:
        from edge_agent.runtime import Ingestor

        store = self._store(stream)
        index, ing = self._progress.get(stream.key, (0, None))
        lat = self._latencies.setdefault(stream.key, [])
        while index < len(stream.pieces):
            piece = stream.pieces[index]
            if piece.offset > t:
                break
            if ing is None:
                ing = Ingestor(str(piece.path), store, self.backend, self.cfg, origin=piece.offset,
                               pinned_adapter=(self.adapter_id, self.vector))
            before = len(ing.report.write_seconds)
            ing.advance(None if math.isinf(t) else t - piece.offset)
            lat.extend(ing.report.write_seconds[before:])
            self._video_seconds[stream.key] = piece.offset + ing.report.stream_seconds
            if not ing.exhausted:
                break  # the piece goes on past t: continue from here next time
            ing.close()
            ing, index = None, index + 1
        self._progress[stream.key] = (index, ing)

    def ask(self, question: BenchQuestion, until: float) -> Answer:
        from edge_agent.qa.answer import answer

        # Only the writer is steered, as in `ask`: the adapter changes what is remembered, not how it is read.
        self.backend.set_steering(None)
        store = self._stores[question.video]
        res = answer(store, self.answerer, question.question, question.lettered_options(),
                     asked_at=until, cfg=self.cfg.qa, until=None if math.isinf(until) else until,
                     embedder=self.embedder)
        # every memory the answerer was shown, not only the cited ones: the replay checks none is from the future
        shown = [m["t_end"] for m in store.get_memories(res["shown"])]
        return Answer(choice=res["choice"], text=res["text"], abstained=res["abstained"], memory_t_ends=shown,
                      answer_id=res["answer_id"], seconds=res.get("seconds", 0.0))

    def stream_stats(self, stream: BenchItem) -> StreamStats:
        index, ing = self._progress.pop(stream.key, (0, None))
        if ing is not None:
            ing.close()
        texts = [m["text"] for m in self._store(stream).memories()]
        return StreamStats(memory_bytes=sum(len(t.encode()) for t in texts), n_memories=len(texts),
                           n_segments=len(self._latencies.get(stream.key, [])),
                           video_seconds=self._video_seconds.get(stream.key, stream.duration or 0.0),
                           write_latencies=list(self._latencies.get(stream.key, [])))


def adapter_vector(cfg: Config, adapter_id: str | None):
    if adapter_id is None:
        return None
    from edge_agent.store import Store
    from edge_agent.vlm.steering import load_steering_vector

    row = Store.open(cfg.db_path).get_adapter(adapter_id)  # StoreError names an unknown id
    return load_steering_vector(row["path"])


def replay_with_runtime(cfg: Config, benchmark, specs, work_dir: Path, judge_factory: Any = None,
                        answerer_factory: Any = None, *, progress: bool = False, console: Any = None):
    """Replay `benchmark` for each config spec through the product's runtime, on one backend opened here."""
    from edge_agent.qa.embed import open_embedder
    from edge_agent.vlm.factory import open_backend, open_reader

    backend = open_backend(cfg)
    answerer = None
    try:
        embedder = open_embedder(cfg)
        # --answerer-url, else the model's own reader when it ships one, else the writer answers
        answerer = answerer_factory() if answerer_factory is not None else open_reader(cfg)
        targets = [RuntimeTarget(s.name, s.adapter_id, adapter_vector(cfg, s.adapter_id), backend, cfg, work_dir,
                                 embedder, answerer) for s in specs]
        judge = judge_factory(backend) if judge_factory is not None else None
        try:
            return replay(benchmark, targets, judge=judge, progress=progress, console=console)
        finally:
            if judge is not None:
                judge.close()
    finally:
        if answerer is not None and answerer_factory is None:
            answerer.close()
        backend.close()
