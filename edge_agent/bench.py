"""`edge-agent bench`: speed and memory of the on-device path, measured in one run and reported as ratios.

The machine is shared and noisy, so absolute times are only context; what a reader should compare are ratios
of two things measured back to back in the same process on the same model:

  vision_cache      the same sliding windows (k segments) written with the frame-embedding cache on vs off
                    (image_cache_size=0): vision-encoder runs and wall time per segment.
  temporal_merging  one full window's prompt with consecutive frames merged into Qwen3-VL temporal pairs
                    (the backend's default) vs each frame separated by text: prompt tokens and prefill time.
  ingest            a synthetic clip through `runtime.ingest` (capture thread, writer, store, kept frames):
                    stream seconds per wall second (real-time factor; > 1 is faster than real time).
  ask               `qa.answer` split into FTS5 search, embedding retrieval (MiniLM/onnxruntime; first call
                    with graph load vs warm), the model's answer and the rest, in ms and as shares.
  store             commit_segment throughput and FTS5 latency on 10k memories (1k with quick=True).
  resources         peak RSS, model file sizes, control-vector apply/clear time vs one token decode.

Everything is written to a temporary folder that is removed afterwards; the user's store is never touched.
Only the MiniLM ONNX graph goes to the configured cache folder, as `ask` would put it there.
The writer runs with a fixed memory token cap and no retries or Phase Two candidates, so the random
length of a model's memories does not dominate the comparison (the settings are in the result).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any, Callable

import numpy as np

from edge_agent.config import Config
from edge_agent.config import replace as replace_cfg
from edge_agent.types import ImagePart, Message, Segment, SteeringVector

BENCH_VERSION = 1
# Stage names passed to `progress`, in order (the CLI can size a progress bar with len(STAGES)).
STAGES = ("load", "vision_cache", "temporal_merging", "ingest", "ask", "store", "resources")
MEMORY_TOKEN_CAP = 32  # fixed writer cap for every stage that writes memories
CAPTION_SEED = 11


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each stage does; quick mode must finish in about a minute on the tiny model."""

    clip_minutes: float  # synthetic clip for vision_cache and ingest (6 segments per minute)
    ask_memories: int
    ask_questions: int  # warm questions after the cold one
    store_memories: int
    fts_queries: int
    repeats: int  # for the micro-timings (decode, steering)


QUICK = Sizes(clip_minutes=1.0, ask_memories=120, ask_questions=5, store_memories=1_000, fts_queries=20, repeats=7)
FULL = Sizes(clip_minutes=3.0, ask_memories=1_000, ask_questions=20, store_memories=10_000, fts_queries=50,
             repeats=21)


# ---------------------------------------------------------------- small helpers

def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _current_rss_mb() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _captions(n: int) -> list[str]:
    """`n` realistic memory texts: the synthetic world's ground-truth segment captions (no video rendered)."""
    from edge_agent.synth.world import build_script, build_world, segment_captions

    out: list[str] = []
    seed = CAPTION_SEED
    while len(out) < n:
        rng = np.random.default_rng([seed, 0])
        world = build_world(rng)
        script = build_script(world, 3600.0, rng)
        out += [c["caption"] for c in segment_captions(world, script, 10.0)]
        seed += 1
    return out[:n]


def _clip_segments(video: Path, cfg: Config) -> list[Segment]:
    """The segments (with keyframes) the capture path cuts from a video file."""
    from edge_agent.capture import open_source
    from edge_agent.capture.segmenter import segment_stream

    with open_source(str(video), cfg.capture) as src:
        return list(segment_stream(src, cfg.capture))


def _fill_store(store, texts: list[str], source: str) -> tuple[int, float]:
    """Commit one segment + memory per text (10 s apart); returns (stream id, seconds spent committing)."""
    stream_id = store.get_or_create_stream(source, f"bench-{source}-{time.time_ns()}", 0.0, "file")
    start = time.perf_counter()
    for i, text in enumerate(texts):
        store.commit_segment(stream_id, Segment(i, 10.0 * i, 10.0 * i + 10.0), memory=text, failure=None,
                             writer_model="bench", adapter_id=None, n_tokens=len(text.split()), latency_s=0.0)
    return stream_id, time.perf_counter() - start


# ---------------------------------------------------------------- timing proxies for the ask path

class _Clock:
    """Accumulates seconds per named part while `qa.answer` runs through the proxies below."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}

    def timed(self, part: str, fn: Callable, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.parts[part] = self.parts.get(part, 0.0) + time.perf_counter() - start


class _TimedStore:
    """The store as `answer`/`retrieve` see it; FTS5 and embedding reads/writes are timed, the rest passes."""

    def __init__(self, store, clock: _Clock) -> None:
        self._store, self._clock = store, clock

    def fts_search(self, *a, **kw):
        return self._clock.timed("fts", self._store.fts_search, *a, **kw)

    def embeddings(self, *a, **kw):
        return self._clock.timed("embedding", self._store.embeddings, *a, **kw)

    def memories_without_embedding(self, *a, **kw):
        return self._clock.timed("embedding", self._store.memories_without_embedding, *a, **kw)

    def put_embeddings(self, *a, **kw):
        return self._clock.timed("embedding", self._store.put_embeddings, *a, **kw)

    def __getattr__(self, name: str):
        return getattr(self._store, name)


class _TimedEmbedder:
    def __init__(self, embedder, clock: _Clock) -> None:
        self._embedder, self._clock = embedder, clock
        self.name = embedder.name

    def encode(self, texts):
        return self._clock.timed("embedding", self._embedder.encode, texts)


class _TimedBackend:
    def __init__(self, backend, clock: _Clock) -> None:
        self._backend, self._clock = backend, clock
        self.model_name = backend.model_name

    def generate(self, *a, **kw):
        return self._clock.timed("model", self._backend.generate, *a, **kw)

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


class _RandomEmbedder:
    """Fixed random unit vectors: measures the store + ranking side of embedding retrieval without MiniLM."""

    name = "bench-random"

    def __init__(self, dim: int = 384, seed: int = 0) -> None:
        self.dim = dim
        self._rng = np.random.default_rng(seed)

    def encode(self, texts):
        v = self._rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


# ---------------------------------------------------------------- stages

def _environment(cfg: Config, backend, model, load_seconds: float, quick: bool) -> dict[str, Any]:
    import llama_cpp

    try:
        from importlib.metadata import version

        lcp_version = version("llama_cpp_python")
    except Exception:  # an editable or vendored build without metadata
        lcp_version = getattr(llama_cpp, "__version__", "unknown")
    return {
        "cpu_count": _cpu_count(),
        "n_threads": cfg.model.n_threads or (os.cpu_count() or 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "llama_cpp_python": lcp_version,
        "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
        "n_gpu_layers": cfg.model.n_gpu_layers,
        "model_name": backend.model_name,
        "model_hash": backend.model_hash,
        "model_path": str(model.model_path),
        "hidden_size": backend.hidden_size,
        "n_layers": backend.n_layers,
        "n_ctx": backend.n_ctx,
        "model_load_seconds": round(load_seconds, 4),
        "load_average_1m": _load_average(),  # > cpu_count: other processes compete; ratios still hold
        "quick": quick,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_windows(backend, wcfg, segments: list[Segment], stream_key: str) -> dict[str, Any]:
    """Write a memory for every segment with the runtime's sliding window; counters are deltas."""
    from collections import deque

    from edge_agent.memory import MemoryWriter, WindowEntry

    writer = MemoryWriter(backend, wcfg, stream_key=stream_key)
    window: deque = deque(maxlen=max(wcfg.window_segments - 1, 1))
    before = dict(backend.stats)
    per_segment: list[float] = []
    for seg in segments:
        start = time.perf_counter()
        result = writer.write(list(window), seg)
        per_segment.append(time.perf_counter() - start)
        window.append(WindowEntry(seg, result.text))
    delta = {k: backend.stats[k] - before.get(k, 0) for k in backend.stats}
    total = sum(per_segment)
    return {"encoder_runs": delta["image_encodes"], "cache_hits": delta["image_cache_hits"],
            "prompt_tokens_evaluated": delta["prompt_tokens_evaluated"],
            "prompt_tokens_reused": delta["prompt_tokens_reused"],
            "seconds_total": round(total, 4), "seconds_per_segment": round(total / max(len(segments), 1), 4),
            "seconds_per_segment_median": round(median(per_segment), 4) if per_segment else 0.0}


def _vision_cache(backend, wcfg, segments: list[Segment], cache_size: int) -> dict[str, Any]:
    saved = backend.image_cache_size
    tag = time.time_ns()
    try:
        # Distinct frame keys per run: nothing encoded earlier can be a hit, and with size 0 nothing is stored.
        backend.image_cache_size = cache_size
        on = _write_windows(backend, wcfg, segments, f"bench-{tag}-cache-on")
        backend.image_cache_size = 0
        off = _write_windows(backend, wcfg, segments, f"bench-{tag}-cache-off")
    finally:
        backend.image_cache_size = saved
    return {
        "segments": len(segments),
        "window_segments": wcfg.window_segments,
        "keyframes": sum(len(s.keyframes) for s in segments),
        "image_cache_size": cache_size,
        "cache_on": on,
        "cache_off": off,
        "encoder_runs_ratio": _ratio(on["encoder_runs"], off["encoder_runs"]),
        "seconds_per_segment_ratio": _ratio(on["seconds_per_segment"], off["seconds_per_segment"]),
        "speedup": _ratio(off["seconds_per_segment"], on["seconds_per_segment"]),
    }


def _separate_frames(messages: list[Message], sep: str = "\n") -> list[Message]:
    """The same prompt with text between consecutive frames, so none is merged into a temporal pair."""
    out = []
    for m in messages:
        parts: list = []
        for p in m.parts:
            if isinstance(p, ImagePart) and parts and isinstance(parts[-1], ImagePart):
                parts.append(sep)
            parts.append(p)
        out.append(Message(m.role, parts))
    return out


def _temporal_merging(backend, wcfg, segments: list[Segment]) -> dict[str, Any]:
    from edge_agent.memory.prompts import writer_messages

    k = wcfg.window_segments
    window = segments[:k]
    context = [(s, "I walked into the kitchen and put the red cup on the table.") for s in window[:-1]]
    tag = time.time_ns()
    variants = {
        "merged": writer_messages(f"bench-{tag}-merged", context, window[-1]),
        "separated": _separate_frames(writer_messages(f"bench-{tag}-separated", context, window[-1])),
    }
    out: dict[str, Any] = {"frames": sum(len(s.keyframes) for s in window), "window_segments": len(window)}
    for name, messages in variants.items():
        toks = backend.prompt_tokens(messages)
        before = dict(backend.stats)
        start = time.perf_counter()
        backend.logits(messages)  # prefill only: vision encoder + decode of the prompt, no generation
        prefill = time.perf_counter() - start
        out[name] = {"prompt_tokens": len(toks), "image_tokens": sum(1 for t in toks if t < 0),
                     "text_tokens": sum(1 for t in toks if t >= 0),
                     "encoder_runs": backend.stats["image_encodes"] - before["image_encodes"],
                     "prefill_seconds": round(prefill, 4)}
    m, s = out["merged"], out["separated"]
    out["prompt_tokens_ratio"] = _ratio(m["prompt_tokens"], s["prompt_tokens"])
    out["image_tokens_ratio"] = _ratio(m["image_tokens"], s["image_tokens"])
    out["prefill_seconds_ratio"] = _ratio(m["prefill_seconds"], s["prefill_seconds"])
    return out


def _ingest(backend, cfg: Config, video: Path, home: Path) -> dict[str, Any]:
    from edge_agent.runtime import ingest
    from edge_agent.store import Store

    before = dict(backend.stats)
    with Store.open(home / "ingest.db") as store:
        start = time.perf_counter()
        report = ingest(str(video), store, backend, cfg)
        wall = time.perf_counter() - start
    if report.error:
        raise RuntimeError(f"bench ingest of {video} failed: {report.error}")
    segments = report.segments_written + report.segments_failed
    lat = report.write_seconds
    return {
        "stream_seconds": round(report.stream_seconds, 3),
        "wall_seconds": round(wall, 4),
        "segments": segments,
        "segments_written": report.segments_written,
        "segments_failed": report.segments_failed,
        "segments_per_second": _ratio(segments, wall),
        "realtime_factor": _ratio(report.stream_seconds, wall),
        "faster_than_realtime": report.stream_seconds > wall,
        "write_seconds_mean": round(sum(lat) / len(lat), 4) if lat else None,
        "write_share_of_wall": _ratio(sum(lat), wall),
        "encoder_runs": backend.stats["image_encodes"] - before["image_encodes"],
        "cache_hits": backend.stats["image_cache_hits"] - before["image_cache_hits"],
        "max_memory_tokens": cfg.writer.max_memory_tokens,
    }


def _breakdown(parts: dict[str, float], total: float) -> dict[str, Any]:
    fts, emb, model = parts.get("fts", 0.0), parts.get("embedding", 0.0), parts.get("model", 0.0)
    other = max(total - fts - emb - model, 0.0)
    total = fts + emb + model + other  # == measured total unless timer noise made `other` negative
    return {"fts_ms": _ms(fts), "embedding_ms": _ms(emb), "model_ms": _ms(model), "other_ms": _ms(other),
            "total_ms": _ms(total),
            "shares": {k: (v / total if total else 0.0) for k, v in
                       (("fts", fts), ("embedding", emb), ("model", model), ("other", other))}}


def _ask(backend, cfg: Config, home: Path, sizes: Sizes, questions: list[dict], cache_dir: Path) -> dict[str, Any]:
    from edge_agent.qa.answer import answer
    from edge_agent.qa.embed import MiniLM, minilm_available
    from edge_agent.qa.retrieve import ensure_embeddings
    from edge_agent.store import Store

    qa = cfg.qa
    qs = [q for q in questions if q.get("options")] or [{"question": "Where did I leave the keys?",
                                                        "options": ["kitchen", "bedroom", "office", "car"]}]
    qs = [qs[i % len(qs)] for i in range(sizes.ask_questions + 1)]
    out: dict[str, Any] = {"memories": sizes.ask_memories, "top_k": qa.top_k}
    with Store.open(home / "ask.db") as store:
        _fill_store(store, _captions(sizes.ask_memories), "ask")
        embedder = None
        emb: dict[str, Any] = {"available": False}
        if qa.use_embeddings and minilm_available():
            built = not (cache_dir / "minilm.onnx").is_file()
            start = time.perf_counter()
            embedder = MiniLM(cache_dir=cache_dir, threads=cfg.model.n_threads)
            load = time.perf_counter() - start
            start = time.perf_counter()
            embedder.encode([qs[0]["question"]])  # onnxruntime's first run allocates and plans
            first = time.perf_counter() - start
            # `ask` embeds memories lazily: its first call after recording embeds every new memory. Timed apart.
            start = time.perf_counter()
            n = ensure_embeddings(store, embedder)
            backfill = time.perf_counter() - start
            emb = {"available": True, "graph_built_now": built, "graph_load_ms": _ms(load),
                   "first_encode_ms": _ms(first), "first_call_ms": _ms(load + first),
                   "backfill_memories": n, "backfill_ms": _ms(backfill),
                   "backfill_ms_per_memory": _ms(backfill / n) if n else None}
        else:
            qa = dataclasses.replace(qa, use_embeddings=False)

        asked_at = 10.0 * sizes.ask_memories
        runs = []
        for q in qs:
            clock = _Clock()
            start = time.perf_counter()
            answer(_TimedStore(store, clock), _TimedBackend(backend, clock), q["question"], q["options"],
                   asked_at=asked_at, cfg=qa,
                   embedder=_TimedEmbedder(embedder, clock) if embedder is not None else None)
            runs.append(_breakdown(clock.parts, time.perf_counter() - start))
    cold, warm = runs[0], runs[1:]
    keys = ("fts_ms", "embedding_ms", "model_ms", "other_ms")
    med = {k: median(r[k] for r in warm) for k in keys}
    total = sum(med.values())
    out["questions"] = len(warm)
    out["cold"] = cold  # the first answer of the process (first grammar, first prompt); memories already embedded
    out["warm"] = {**med, "total_ms": round(total, 3),
                   "shares": {k[:-3]: (v / total if total else 0.0) for k, v in med.items()}}
    if embedder is not None:
        emb["warm_ms"] = med["embedding_ms"]
        emb["first_to_warm_ratio"] = _ratio(emb["first_call_ms"], med["embedding_ms"])
    out["embedding"] = emb
    return out


def _store(home: Path, sizes: Sizes, questions: list[dict], qa) -> dict[str, Any]:
    from edge_agent.qa.retrieve import candidates_per_ranking, embedding_ranking, ensure_embeddings
    from edge_agent.store import Store

    n = sizes.store_memories
    texts = _captions(n)
    with Store.open(home / "store.db") as store:
        _, commit_s = _fill_store(store, texts, "store")
        queries = [q["question"] for q in questions] or ["where did I leave the keys"]
        queries = [queries[i % len(queries)] for i in range(sizes.fts_queries)]
        depth = candidates_per_ranking(qa)
        store.fts_search(queries[0], depth)  # first query pages the index in; time the steady state
        fts = []
        for q in queries:
            start = time.perf_counter()
            store.fts_search(q, depth)
            fts.append(time.perf_counter() - start)
        # Embedding ranking at this size with stand-in vectors: store read + cosine + ordering, MiniLM excluded.
        fake = _RandomEmbedder()
        ensure_embeddings(store, fake)
        vec = []
        for q in queries[: max(3, sizes.fts_queries // 5)]:
            start = time.perf_counter()
            embedding_ranking(store, q, fake, depth)
            vec.append(time.perf_counter() - start)
        db_bytes = sum(p.stat().st_size for p in home.glob("store.db*"))
    return {
        "memories": n,
        "commit_seconds": round(commit_s, 4),
        "commits_per_second": _ratio(n, commit_s),
        "commit_ms_mean": _ms(commit_s / n),
        "fts_queries": len(fts),
        "fts_depth": depth,
        "fts_ms_median": _ms(median(fts)),
        "fts_ms_p90": _ms(_pct(fts, 90)),
        "vector_rank_ms_median": _ms(median(vec)),
        "vector_to_fts_ratio": _ratio(median(vec), median(fts)),
        "db_mb": round(db_bytes / (1 << 20), 3),
    }


def _resources(backend, model, cfg: Config, sizes: Sizes) -> dict[str, Any]:
    # One token decode: the same short prompt twice; the second call keeps the prefix and re-decodes only the
    # last token (llama.cpp needs its logits), so its time is one decode plus re-tokenizing the short prompt.
    msgs = [Message("user", ["Say something short."])]
    backend.logits(msgs)
    decode = []
    for _ in range(sizes.repeats):
        start = time.perf_counter()
        backend.logits(msgs)
        decode.append(time.perf_counter() - start)
    layer = min(cfg.adapt.layer, backend.n_layers - 1)
    rng = np.random.default_rng(0)
    vec = SteeringVector((0.01 * rng.standard_normal(backend.hidden_size)).astype(np.float32), layer=layer,
                         base_model_hash=backend.model_hash, adapter_id="bench")
    apply, clear = [], []
    try:
        for _ in range(sizes.repeats):
            start = time.perf_counter()
            backend.set_steering(vec)
            apply.append(time.perf_counter() - start)
            start = time.perf_counter()
            backend.set_steering(None)
            clear.append(time.perf_counter() - start)
    finally:
        backend.set_steering(None)
    d, a, c = median(decode), median(apply), median(clear)
    model_mb = model.model_path.stat().st_size / (1 << 20)
    mmproj_mb = model.mmproj_path.stat().st_size / (1 << 20)
    peak = _peak_rss_mb()
    return {
        "peak_rss_mb": round(peak, 2),
        "current_rss_mb": None if _current_rss_mb() is None else round(_current_rss_mb(), 2),
        "model_file_mb": round(model_mb, 3),
        "mmproj_file_mb": round(mmproj_mb, 3),
        "peak_rss_to_model_files_ratio": _ratio(peak, model_mb + mmproj_mb),
        "steering": {
            "layer": layer,
            "apply_ms": _ms(a), "clear_ms": _ms(c), "token_decode_ms": _ms(d),
            "apply_to_decode_ratio": _ratio(a, d), "clear_to_decode_ratio": _ratio(c, d),
            "note": "apply/clear also empty the KV cache: the next prompt is evaluated from the start",
        },
    }


# ---------------------------------------------------------------- entry point

def run_bench(cfg: Config, *, quick: bool = False, model_dir: Path | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the on-device path on the configured model (or the model folder `model_dir`); JSON-ready dict.

    `progress(stage)` is called at the start of each stage (names in STAGES). Raises ModelError when the
    model cannot be resolved or loaded. quick=True uses smaller sizes (about a minute on the tiny model).
    """
    from edge_agent.models import resolve
    from edge_agent.synth import generate
    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    sizes = QUICK if quick else FULL
    step = progress or (lambda stage: None)
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []

    def stage(name: str) -> None:
        marks.append((name, time.perf_counter()))
        step(name)

    stage("load")
    model = resolve(model_dir if model_dir is not None else cfg.model.name, cfg.home)
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp:
        home = Path(tmp)
        # The bench's own data folder (store, kept frames); the cache (MiniLM graph) stays the user's.
        bcfg = dataclasses.replace(cfg, home=home)
        bcfg = replace_cfg(bcfg, "writer", max_memory_tokens=MEMORY_TOKEN_CAP, max_retries=0, candidate_share=0.0)
        cache_size = cfg.model.image_cache_size or 64
        start = time.perf_counter()
        backend = LlamaCppBackend(model.model_path, model.mmproj_path, n_threads=cfg.model.n_threads,
                                  n_ctx=cfg.model.n_ctx, n_gpu_layers=cfg.model.n_gpu_layers,
                                  image_cache_size=cache_size, seed=cfg.model.seed, name=model.name,
                                  model_hash=model.expected_hash or None)
        load_s = time.perf_counter() - start
        with backend:
            result: dict[str, Any] = {"version": BENCH_VERSION,
                                      "environment": _environment(cfg, backend, model, load_s, quick)}
            # Long enough that the window fills and then slides at least twice, whatever k and segment length.
            seg_s = bcfg.capture.segment_seconds
            minutes = min(max(sizes.clip_minutes, (bcfg.writer.window_segments + 2) * seg_s / 60.0), 60.0)
            paths = generate(seed=CAPTION_SEED, minutes=minutes, out_dir=home / "clip", segment_seconds=seg_s)
            questions = json.loads(paths.questions.read_text(encoding="utf-8"))["questions"]
            segments = _clip_segments(paths.video, bcfg)
            result["settings"] = {
                "clip_seconds": round(minutes * 60.0, 3), "segments": len(segments),
                "window_segments": bcfg.writer.window_segments, "max_memory_tokens": MEMORY_TOKEN_CAP,
                "max_retries": 0, "candidate_share": 0.0, "frame_size": bcfg.capture.frame_size,
                "keyframes_per_segment": bcfg.capture.keyframes_per_segment, **dataclasses.asdict(sizes), "clip_minutes": minutes}

            stage("vision_cache")
            result["vision_cache"] = _vision_cache(backend, bcfg.writer, segments, cache_size)
            stage("temporal_merging")
            result["temporal_merging"] = _temporal_merging(backend, bcfg.writer, segments)
            stage("ingest")
            result["ingest"] = _ingest(backend, bcfg, paths.video, home)
            stage("ask")
            result["ask"] = _ask(backend, bcfg, home, sizes, questions, cache_dir=cfg.cache_dir)
            stage("store")
            result["store"] = _store(home, sizes, questions, bcfg.qa)
            stage("resources")
            result["resources"] = _resources(backend, model, cfg, sizes)
    end = time.perf_counter()
    ends = [t for _, t in marks[1:]] + [end]
    result["stage_seconds"] = {name: round(e - t, 3) for (name, t), e in zip(marks, ends)}
    result["seconds"] = round(end - started, 3)
    result["environment"]["load_average_1m_end"] = _load_average()
    return result


# ---------------------------------------------------------------- a table for people

def summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, raw numbers, ratio) rows for a printed table (`tools/bench_report.py`, the CLI)."""

    def f(x: Any, nd: int = 3) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:.{nd}g}" if abs(x) < 1e4 else f"{x:,.0f}"
        return str(x)

    rows: list[tuple[str, str, str]] = []

    def versus(label: str, section: dict, a: str, b: str, key: str) -> None:
        """One row comparing `key` between the two variants `a` and `b` of a section, with its ratio."""
        rows.append((label, f"{f(section[a][key])} / {f(section[b][key])}", f(section[f"{key}_ratio"])))

    v = result.get("vision_cache")
    if v:
        versus("vision encoder runs, cache on/off", v, "cache_on", "cache_off", "encoder_runs")
        versus("s per segment, cache on/off", v, "cache_on", "cache_off", "seconds_per_segment")
    t = result.get("temporal_merging")
    if t:
        versus("prompt tokens per window, merged/separated", t, "merged", "separated", "prompt_tokens")
        versus("prefill s, merged/separated", t, "merged", "separated", "prefill_seconds")
    g = result.get("ingest")
    if g:
        rows.append(("ingest real-time factor (>1 faster than real time)",
                     f"{f(g['stream_seconds'])} stream s in {f(g['wall_seconds'])} s, "
                     f"{f(g['segments_per_second'])} segments/s", f(g["realtime_factor"])))
    a = result.get("ask")
    if a:
        w = a["warm"]
        for part in ("fts", "embedding", "model", "other"):
            rows.append((f"ask (warm): {part}", f"{f(w[part + '_ms'])} ms", f"{w['shares'][part]:.1%}"))
        e = a.get("embedding", {})
        if e.get("available"):
            rows.append(("embedding retrieval first (incl. graph load) / warm",
                         f"{f(e['first_call_ms'])} / {f(e['warm_ms'])} ms", f(e["first_to_warm_ratio"])))
    s = result.get("store")
    if s:
        rows.append((f"store commit_segment ({s['memories']} memories)", f"{f(s['commits_per_second'])} segments/s", ""))
        rows.append((f"FTS5 search ({s['memories']} memories)",
                     f"median {f(s['fts_ms_median'])} ms, p90 {f(s['fts_ms_p90'])} ms", ""))
        rows.append(("vector ranking / FTS5 search", f"{f(s['vector_rank_ms_median'])} ms",
                     f(s["vector_to_fts_ratio"])))
    r = result.get("resources")
    if r:
        rows.append(("peak RSS / model files", f"{f(r['peak_rss_mb'])} MB / "
                     f"{f(r['model_file_mb'] + r['mmproj_file_mb'])} MB", f(r["peak_rss_to_model_files_ratio"])))
        st = r["steering"]
        rows.append(("control vector apply / one token decode", f"{f(st['apply_ms'])} / {f(st['token_decode_ms'])} ms",
                     f(st["apply_to_decode_ratio"])))
        rows.append(("control vector clear / one token decode", f"{f(st['clear_ms'])} / {f(st['token_decode_ms'])} ms",
                     f(st["clear_to_decode_ratio"])))
    return rows


__all__ = ["run_bench", "summary_rows", "STAGES", "QUICK", "FULL", "Sizes"]
