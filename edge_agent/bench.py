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
  run_rss           peak RSS of `edge-agent run` on a 3-minute synthetic clip in a child process (a fresh data
                    folder, the MiniLM graph already cached), against the model files it maps.

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
import shutil
import subprocess
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
STAGES = ("load", "vision_cache", "temporal_merging", "writer_vs_llama", "segmenter", "ingest", "ask", "store",
          "retrieval", "resources", "run_rss", "phase_two")
RUN_RSS_MINUTES = 3.0  # the clip of the README's footprint row (issue 14)
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
    retrieval_memories: int = 10_000  # generated memories for the vector-index stage
    retrieval_base: int = 300  # distinct captions embedded by MiniLM (mixed pairwise up to retrieval_memories)
    retrieval_questions: int = 40
    writer_segments: int = 6  # segments written for writer vs llama.cpp alone
    phase_two_pairs: int = 2  # preference pairs per DPO step (Phase Two rows)
    phase_two_steps: int = 3  # DPO steps timed, cached and full-forward each


QUICK = Sizes(clip_minutes=1.0, ask_memories=120, ask_questions=5, store_memories=1_000, fts_queries=20, repeats=7)
FULL = Sizes(clip_minutes=3.0, ask_memories=1_000, ask_questions=20, store_memories=10_000, fts_queries=50,
             repeats=21, retrieval_memories=100_000, retrieval_base=2_000, retrieval_questions=100,
             writer_segments=12, phase_two_pairs=4, phase_two_steps=5)


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
    """Accumulates seconds per named part while `qa.answer` runs through the proxies below. `now` is the time
    source (tests inject a fake clock whose parts take known times)."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.parts: dict[str, float] = {}
        self.now = now

    def timed(self, part: str, fn: Callable, *args, **kwargs):
        start = self.now()
        try:
            return fn(*args, **kwargs)
        finally:
            self.parts[part] = self.parts.get(part, 0.0) + self.now() - start


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

    def vector_search(self, *a, **kw):
        return self._clock.timed("embedding", self._store.vector_search, *a, **kw)

    def maintain_vector_index(self, *a, **kw):
        return self._clock.timed("embedding", self._store.maintain_vector_index, *a, **kw)

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

    def continuation_logprobs(self, *a, **kw):  # qa.choice = "score": model time too
        return self._clock.timed("model", self._backend.continuation_logprobs, *a, **kw)

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
    shares, order = _shares({"fts": fts, "embedding": emb, "model": model, "other": other})
    return {"fts_ms": _ms(fts), "embedding_ms": _ms(emb), "model_ms": _ms(model), "other_ms": _ms(other),
            "total_ms": _ms(total), "shares": shares, "order": order}


def _shares(parts: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """Each part's share of their sum, and the part names largest first."""
    total = sum(parts.values())
    shares = {k: (v / total if total else 0.0) for k, v in parts.items()}
    return shares, sorted(shares, key=lambda k: -shares[k])


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
    shares, order = _shares({k[:-3]: v for k, v in med.items()})
    out["warm"] = {**med, "total_ms": round(total, 3), "shares": shares, "order": order}
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


# ---------------------------------------------------------------- no waste around llama.cpp and OpenCV

class _Recorder:
    """The backend as the writer sees it; records every generate call (messages, sampling, schema, result)."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.calls: list[tuple] = []

    def generate(self, messages, sampling, json_schema=None):
        g = self._backend.generate(messages, sampling, json_schema)
        self.calls.append((messages, sampling, json_schema, g))
        return g

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


def bare_generate(backend, messages: list[Message], sampling, json_schema=None) -> tuple[list[int], float]:
    """llama.cpp alone on the prompt the backend would evaluate: the same tokens and image chunks, evaluated
    from an empty KV cache with llama.cpp's own helpers (`mtmd_helper_eval_chunk_single` encodes every image
    again), then the same sampler chain and one `llama_decode` per token. Returns (tokens, seconds); the
    backend's cache bookkeeping is reset so its next call starts from scratch."""
    import ctypes
    from contextlib import ExitStack

    lc, mtmd = backend._lc, backend._mtmd
    with ExitStack() as stack:
        units = backend._prompt_units(messages, True, stack)  # tokenizing is not timed: both sides do it
        backend._clear_kv()
        start = time.perf_counter()
        sampler = backend._make_sampler(sampling, json_schema)
        stack.callback(lc.llama_sampler_free, sampler)
        n_past = 0
        i = 0
        while i < len(units):
            u = units[i]
            if u.ident[0] == "i":
                new = lc.llama_pos(0)
                rc = mtmd.mtmd_helper_eval_chunk_single(backend._mctx, backend._ctx, u.chunk, n_past, 0,
                                                        backend.n_batch, False, ctypes.byref(new))
                if rc != 0:
                    raise RuntimeError(f"bare llama.cpp: image chunk failed ({rc})")
                n_past = new.value
                i += 1
                continue
            j = i
            while j < len(units) and units[j].ident[0] == "t":
                j += 1
            toks = [units[t].ident[1] for t in range(i, j)]
            for s0 in range(0, len(toks), backend.n_batch):
                part = toks[s0:s0 + backend.n_batch]
                arr = (lc.llama_token * len(part))(*part)
                if lc.llama_decode(backend._ctx, lc.llama_batch_get_one(arr, len(part))) != 0:
                    raise RuntimeError("bare llama.cpp: llama_decode failed on the prompt")
                n_past += len(part)
            i = j
        out: list[int] = []
        one = (lc.llama_token * 1)()
        for _ in range(sampling.max_tokens):
            tok = int(lc.llama_sampler_sample(sampler, backend._ctx, -1))
            if tok in backend._stop_ids or lc.llama_vocab_is_eog(backend._vocab, tok):
                break
            out.append(tok)
            if len(out) == sampling.max_tokens:
                break
            one[0] = tok
            if lc.llama_decode(backend._ctx, lc.llama_batch_get_one(one, 1)) != 0:
                raise RuntimeError("bare llama.cpp: llama_decode failed while generating")
        seconds = time.perf_counter() - start
    backend._clear_kv()
    return out, seconds


def _writer_vs_llama(backend, wcfg, segments: list[Segment]) -> dict[str, Any]:
    """The writer's sliding windows (frame cache + KV prefix reuse on) against llama.cpp alone on the very
    same prompts, and the backend with its caches off against the same, which isolates per-call Python work."""
    from collections import deque

    from edge_agent.memory import MemoryWriter, WindowEntry

    rec = _Recorder(backend)
    writer = MemoryWriter(rec, wcfg, stream_key=f"bench-{time.time_ns()}-writer")
    window: deque = deque(maxlen=max(wcfg.window_segments - 1, 1))
    backend._clear_kv()
    writer_s = 0.0
    for seg in segments:
        start = time.perf_counter()
        result = writer.write(list(window), seg)
        writer_s += time.perf_counter() - start
        window.append(WindowEntry(seg, result.text))
    bare_s, cold_s, same, n_tokens = 0.0, 0.0, 0, 0
    saved = backend.image_cache_size
    try:
        for messages, sampling, schema, g in rec.calls:
            toks, t = bare_generate(backend, messages, sampling, schema)
            bare_s += t
            n_tokens += len(toks)
            backend.image_cache_size = 0  # the backend doing what bare llama.cpp does: no caches at all
            backend._image_cache.clear()
            backend._clear_kv()
            start = time.perf_counter()
            cold = backend.generate(messages, sampling, schema)
            cold_s += time.perf_counter() - start
            backend.image_cache_size = saved
            same += int(cold.text == g.text and backend._llm.detokenize(toks).decode("utf-8", "replace") == g.text)
    finally:
        backend.image_cache_size = saved
        backend._clear_kv()
    calls = len(rec.calls)
    return {"segments": len(segments), "generate_calls": calls, "completion_tokens": n_tokens,
            "writer_seconds": round(writer_s, 4), "llama_cpp_alone_seconds": round(bare_s, 4),
            "backend_no_cache_seconds": round(cold_s, 4),
            "writer_to_llama_cpp_ratio": _ratio(writer_s, bare_s),
            "backend_no_cache_to_llama_cpp_ratio": _ratio(cold_s, bare_s),
            "same_text_all_three": same, "note": "writer = frame cache + KV prefix reuse (greedy, so the "
            "three give the same text); no_cache = the backend doing the same work as llama.cpp alone"}


def _segmenter_vs_decode(video: Path, cfg: Config) -> dict[str, Any]:
    """The capture path (grab every frame, decode 2 per second, downscale, de-duplicate, pick keyframes)
    against a bare OpenCV decode of every frame of the same file."""
    import cv2

    start = time.perf_counter()
    segments = _clip_segments(video, cfg)
    seg_s = time.perf_counter() - start
    start = time.perf_counter()
    cap = cv2.VideoCapture(str(video))
    frames = 0
    try:
        while True:
            ok, _ = cap.read()
            if not ok:
                break
            frames += 1
    finally:
        cap.release()
    bare_s = time.perf_counter() - start
    return {"frames": frames, "segments": len(segments), "segmenter_seconds": round(seg_s, 4),
            "bare_decode_seconds": round(bare_s, 4),
            "segmenter_throughput_ratio": _ratio(bare_s, seg_s),
            "note": "frames per second of the segmenter / of a bare cv2 read() loop; >= 0.9 is the goal"}


def _retrieval(home: Path, sizes: "Sizes", cfg: Config, cache_dir: Path) -> dict[str, Any]:
    """`vector_retrieval` at the bench's size on caption texts: MiniLM vectors of distinct captions (mixed
    pairwise up to the size), or random unit vectors when MiniLM is not installed."""
    from edge_agent.qa.embed import MiniLM, minilm_available

    caps = list(dict.fromkeys(_captions(max(sizes.retrieval_base * 2, 200))))[: sizes.retrieval_base]
    questions = ["Where did I leave the purple cup?", "Who did I meet in the kitchen?",
                 "What did I read on the note at the door?", "How many times did I pick up the blue book?",
                 "What was I doing in the bedroom?", "Where is the red bag now?",
                 "What did I do right after I walked into the living room?", "Did I see <face_2> today?"]
    questions = [questions[i % len(questions)] + ("" if i < len(questions) else f" ({i})")
                 for i in range(sizes.retrieval_questions)]
    if cfg.qa.use_embeddings and minilm_available():
        emb = MiniLM(cache_dir=cache_dir, threads=1)
        start = time.perf_counter()
        base, qv = emb.encode(caps), emb.encode(questions)
        source, enc_s = "minilm", time.perf_counter() - start
    else:
        rnd = _RandomEmbedder()
        base, qv, source, enc_s = rnd.encode(caps), rnd.encode(questions), "random", 0.0
    out = vector_retrieval(home, sizes.retrieval_memories, caps, base, questions, qv, cfg.qa,
                           exact_queries=min(10, len(questions)))
    out["vectors"] = source
    out["embed_base_seconds"] = round(enc_s, 3)
    return out


# ---------------------------------------------------------------- retrieval at a lifetime of memories

class _LookupEmbedder:
    """Question vectors computed beforehand (MiniLM), so retrieval timings exclude the embedder."""

    def __init__(self, name: str, table: dict[str, np.ndarray]) -> None:
        self.name, self._table = name, table

    def encode(self, texts):
        from edge_agent.store.text import clean_text

        return np.stack([self._table[clean_text(t)] for t in texts]).astype(np.float32)


def mixed_vectors(base: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors in the span of real embeddings: (w * base[a] + (1 - w) * base[b]) normalised, w in
    [0.55, 1), so each stays nearest its own text a (returned) yet no two memories share a vector. With
    n <= len(base) the real vectors themselves (a = 0..n-1)."""
    if n <= len(base):
        return base[:n].astype(np.float32), np.arange(n)
    rng = np.random.default_rng(seed)
    a = np.arange(n) % len(base)
    b = rng.integers(len(base), size=n)
    w = rng.uniform(0.55, 1.0, size=(n, 1)).astype(np.float32)
    out = np.empty((n, base.shape[1]), np.float32)
    for s in range(0, n, 100_000):  # in blocks: 1M x 384 float32 is 1.5 GB at once otherwise
        e = min(s + 100_000, n)
        v = w[s:e] * base[a[s:e]] + (1.0 - w[s:e]) * base[b[s:e]]
        out[s:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out, a


def bulk_memories(store, texts: list[str], source: str = "bulk") -> list[int]:
    """One segment + memory per text (10 s apart) in one transaction: building a million memories through
    commit_segment would take hours here (the store stage times commit_segment itself)."""
    now = time.time()
    stream_id = store.get_or_create_stream(source, f"bench-{source}-{time.time_ns()}", 0.0, "file")
    with store._tx() as conn:
        first = conn.execute("SELECT coalesce(max(id), 0) FROM segments").fetchone()[0] + 1
        conn.executemany(
            "INSERT INTO segments (id, stream_id, idx, t_start, t_end, status, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'written', ?)",
            ((first + i, stream_id, i, 10.0 * i, 10.0 * i + 10.0, now) for i in range(len(texts))))
        m0 = conn.execute("SELECT coalesce(max(id), 0) FROM memories").fetchone()[0] + 1
        conn.executemany(
            "INSERT INTO memories (id, stream_id, segment_id, text, t_start, t_end, writer_model, n_tokens, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, 'bench', ?, ?)",
            ((m0 + i, stream_id, first + i, t, 10.0 * i, 10.0 * i + 10.0, len(t.split()), now)
             for i, t in enumerate(texts)))
    return list(range(m0, m0 + len(texts)))


def _timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _dist(values: list[float]) -> dict[str, float]:
    return {"p50_ms": _ms(_pct(values, 50)), "p95_ms": _ms(_pct(values, 95)), "n": len(values)}


def vector_retrieval(home: Path, n: int, base_texts: list[str], base_vecs: np.ndarray, questions: list[str],
                     question_vecs: np.ndarray, qa, *, model: str = "all-MiniLM-L6-v2", exact_queries: int = 20,
                     seed: int = 0, other_rescores: tuple[int, ...] = ()) -> dict[str, Any]:
    """Retrieval over `n` generated memories in one SQLite file: build time, bytes per memory, p50/p95 of
    FTS5, the vector index and fused retrieval (`qa.retrieve`), recall@8 of the index against the exact
    scan, and the exact scan read back from SQLite (what retrieval did before the index) on a few queries.

    Memory i has text base_texts[a_i] and a vector from `mixed_vectors` (the real vectors when n <=
    len(base_vecs)). Question vectors are given, so MiniLM's own time is not part of the latencies."""
    from edge_agent.qa.retrieve import candidates_per_ranking, exact_ranking, recall_at, retrieve
    from edge_agent.store import Store

    vecs, src = mixed_vectors(base_vecs, n, seed)
    texts = [base_texts[i] for i in src]
    path = home / f"vectors-{n}.db"
    out: dict[str, Any] = {"memories": n, "real_vectors": n <= len(base_vecs), "base_vectors": len(base_vecs),
                           "questions": len(questions)}
    with Store.open(path) as store:
        ids, t_mem = _timed(bulk_memories, store, texts)
        t_emb = 0.0
        for s in range(0, n, 20_000):  # the runtime's write path for vectors: put_embeddings
            _, t = _timed(store.put_embeddings, model, ids[s:s + 20_000], vecs[s:s + 20_000])
            t_emb += t
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # count the file, not the -wal
        db_bytes = sum(p.stat().st_size for p in home.glob(f"vectors-{n}.db*"))
        out["build"] = {"memories_s": round(t_mem, 3), "embeddings_s": round(t_emb, 3),
                        "embeddings_per_s": _ratio(n, t_emb),
                        "db_bytes_per_memory": round(db_bytes / n, 1), "db_mb": round(db_bytes / (1 << 20), 2)}
        depth = candidates_per_ranking(qa)
        rss0 = _current_rss_mb()
        _, t_load = _timed(store.vector_search, model, question_vecs[0], depth)
        rss1 = _current_rss_mb()
        stats = store.vector_index_stats(model)
        out["index"] = {"load_s": round(t_load, 3), "ram_mb": round(stats["bytes"] / (1 << 20), 2),
                        "lists": stats["lists"],
                        "rss_growth_mb": None if rss0 is None or rss1 is None else round(rss1 - rss0, 1),
                        "bytes_per_memory_ram": round(stats["bytes"] / max(stats["vectors"], 1), 1)}
        table = {}
        from edge_agent.store.text import clean_text

        for q, v in zip(questions, question_vecs):
            table[clean_text(q)] = v
        emb = _LookupEmbedder(model, table)
        store.fts_search(questions[0], depth)
        fts, vec, fused, recalls = [], [], [], []
        for q, v in zip(questions, question_vecs):
            _, t = _timed(store.fts_search, q, depth)
            fts.append(t)
            found, t = _timed(store.vector_search, model, v, depth)
            vec.append(t)
            _, t = _timed(retrieve, store, q, qa, embedder=emb)
            fused.append(t)
            # Exact top-8 from the generated matrix (same ties-by-id order as the scan from SQLite).
            sims = vecs @ v
            top = np.argpartition(-sims, 8)[:64] if n > 64 else np.arange(n)
            top = top[np.lexsort((top, -sims[top]))][:8]
            recalls.append(recall_at(found, [(ids[i], float(sims[i])) for i in top], 8))
        out["fts5"], out["vector"], out["fused"] = _dist(fts), _dist(vec), _dist(fused)
        out["recall_at_8"] = {"mean": round(float(np.mean(recalls)), 4), "min": round(float(np.min(recalls)), 4)}

        def exact_top8(v):
            sims = vecs @ v
            top = np.argpartition(-sims, 8)[:64] if n > 64 else np.arange(n)
            top = top[np.lexsort((top, -sims[top]))][:8]
            return [(ids[i], float(sims[i])) for i in top]

        out["other_rescores"] = {}
        for r in other_rescores:  # the recall / latency trade-off of the exactly re-scored candidates
            ts, rec = [], []
            for v in question_vecs:
                found, t = _timed(store.vector_search, model, v, depth, rescore=r)
                ts.append(t)
                rec.append(recall_at(found, exact_top8(v), 8))
            out["other_rescores"][str(r)] = {**_dist(ts), "recall_at_8_mean": round(float(np.mean(rec)), 4)}
        # Before the index: every question read all vectors back from SQLite and ranked them in numpy.
        ex = []
        for v in question_vecs[:exact_queries]:
            _, t = _timed(exact_ranking, store, v, model, depth)
            ex.append(t)
        out["exact_scan"] = _dist(ex)
        out["vector_to_exact_scan_p50_ratio"] = _ratio(_pct(vec[: len(ex)], 50), _pct(ex, 50))
        out["vector_to_fts5_p50_ratio"] = _ratio(_pct(vec, 50), _pct(fts, 50))
    for p in home.glob(f"vectors-{n}.db*"):
        p.unlink()
    return out


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


def _run_rss(cfg: Config, model_name: str, model, tmp: Path) -> dict[str, Any]:
    """What a wearer's `edge-agent run` holds: a child process (the CLI, as a user starts it) ingests a 3-minute
    clip into a fresh data folder with the user's config.toml and environment; os.wait4 gives that child's own
    peak RSS."""
    from edge_agent.synth import generate

    clip = generate(seed=CAPTION_SEED, minutes=RUN_RSS_MINUTES, out_dir=tmp / "run_rss_clip")
    home = tmp / "run_rss_home"
    home.mkdir()
    if (cfg.home / "config.toml").is_file():
        shutil.copy(cfg.home / "config.toml", home / "config.toml")
    if cfg.cache_dir.is_dir():  # the graph `ask` built above: the row measures running, not building it.
        # A copy, not a symlink: through a symlinked folder onnxruntime held 17 MB more (measured here).
        shutil.copytree(cfg.cache_dir, home / "cache")
    env = {**os.environ, "EDGE_AGENT_MODEL__NAME": model_name}
    env.pop("EDGE_AGENT_HOME", None)
    out_path, err_path = tmp / "run_rss.out", tmp / "run_rss.err"
    # Linux carries a process's pre-exec high-water mark into its ru_maxrss, so a child forked from this (large)
    # process would report this process's peak: a small Python forks the CLI and reports its wait4 rusage instead.
    launcher = ("import os, subprocess, sys\n"
                "out, err = open(sys.argv[1], 'wb'), open(sys.argv[2], 'wb')\n"
                "p = subprocess.Popen(sys.argv[3:], stdout=out, stderr=err)\n"
                "_, status, usage = os.wait4(p.pid, 0)\n"
                "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")
    cmd = [sys.executable, "-m", "edge_agent.cli", "run", str(clip.video), "--home", str(home), "--json"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", launcher, str(out_path), str(err_path), *cmd], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    code, maxrss = (int(x) for x in done.stdout.split()) if done.returncode == 0 else (done.returncode, 0)
    if code:
        reason = err_path.read_text(errors="replace") if err_path.is_file() else done.stderr
        return {"available": False, "reason": reason.strip()[-300:]}
    ran = json.loads(out_path.read_text())
    files_mb = (model.model_path.stat().st_size + model.mmproj_path.stat().st_size) / (1 << 20)
    peak = maxrss / (1 << 20) if sys.platform == "darwin" else maxrss / 1024  # kilobytes on Linux, bytes on macOS
    return {"available": True, "clip_minutes": RUN_RSS_MINUTES, "wall_seconds": round(wall, 2),
            **{k: ran[k] for k in ("segments_written", "segments_failed")}, "peak_rss_mb": round(peak, 1),
            "model_files_mb": round(files_mb, 1), "beyond_model_files_mb": round(peak - files_mb, 1),
            "goal_beyond_model_files_mb": 250}


# ---------------------------------------------------------------- Phase Two: what a DPO step costs

class PeakRss:
    """Peak resident memory of this process from a point on: Linux lets a process reset its high-water mark
    (writing 5 to /proc/self/clear_refs resets VmHWM), so one stage's peak is measured apart from the earlier
    stages of the same run. Elsewhere falls back to the process peak (ru_maxrss), which can only be higher."""

    def __init__(self) -> None:
        self.method = "ru_maxrss (process peak, includes earlier stages)"
        try:
            Path("/proc/self/clear_refs").write_text("5")
            if self._hwm() is not None:
                self.method = "VmHWM reset at the start of the stage"
        except OSError:
            pass

    @staticmethod
    def _hwm() -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def mb(self) -> float:
        hwm = self._hwm() if self.method.startswith("VmHWM") else None
        return round(hwm if hwm is not None else _peak_rss_mb(), 1)


def phase_two_pairs(segments: list[Segment], window_segments: int, n_pairs: int, stream_key: str) -> list:
    """`n_pairs` preference pairs on the writer's own windows (k segments, the newest last) of `segments`, with
    two synthetic-world captions as the chosen and the rejected memory (Phase Two trains on exactly such
    prompts, rebuilt from kept frames)."""
    from edge_agent.adapt.dpo import PreferencePair, completion_text
    from edge_agent.memory.prompts import writer_messages

    k = max(1, min(window_segments, len(segments)))
    caps = _captions(2 * n_pairs + k)
    out = []
    for i in range(n_pairs):
        end = min(k + i, len(segments))
        window = segments[end - k:end]
        context = [(s, caps[(i + j) % len(caps)]) for j, s in enumerate(window[:-1])]
        messages = writer_messages(f"{stream_key}-{i}", context, window[-1])
        out.append(PreferencePair(messages, completion_text(caps[-1 - 2 * i]), completion_text(caps[-2 - 2 * i]),
                                  pair_id=i))
    return out


def _tensor_mb(obj) -> float:
    """Bytes held by the tensors in a LayerInputs-like object (hidden states, layer kwargs, deepstack), MB."""
    import torch

    seen: set[int] = set()
    total = 0

    def walk(x) -> None:
        nonlocal total
        if isinstance(x, torch.Tensor):
            if id(x) not in seen:
                seen.add(id(x))
                total += x.numel() * x.element_size()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk([obj.hidden, obj.layer_kwargs, obj.deepstack])
    return total / (1 << 20)


def phase_two_cost(hf_dir: Path, pairs: list, acfg, *, steps: int, full_steps: int, dtype: str = "float32",
                   threads: int = 1) -> dict[str, Any]:
    """Phase Two's DPO step on `pairs` (one step = every pair, chosen and rejected), measured two ways on the
    frozen checkpoint at `hf_dir`:

      cached        the product's path (`adapt.dpo`): `prepare_pairs` runs the model up to layer L once per
                    sequence and keeps what enters layer L; each `train_vector` step runs layers L.. only.
      full_forward  the same loss and optimizer step with every sequence through the whole model each step
                    (`FrozenQwen3VL.full_logp`, the vector added by a hook at layer L's output), as a trainer
                    without the cache would do.

    Both start from the zero vector, so their first losses must agree (a check that they compute the same
    thing). Peak RSS is this stage's (see PeakRss); torch runs on `threads` threads."""
    import torch

    from edge_agent.adapt.dpo import dpo_loss, prepare_pairs, train_vector
    from edge_agent.adapt.fit import checkpoint_parameters, estimate_bytes
    from edge_agent.adapt.frozen_model import FrozenQwen3VL

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    peak = PeakRss()
    rss0 = _current_rss_mb()
    try:
        start = time.perf_counter()
        policy = FrozenQwen3VL(hf_dir, acfg.layer, dtype=getattr(torch, dtype))
        load_s = time.perf_counter() - start
        rss_loaded = _current_rss_mb()
        start, cpu0 = time.perf_counter(), time.process_time()
        prepared = prepare_pairs(policy, pairs)
        prepare_s, prepare_cpu = time.perf_counter() - start, time.process_time() - cpu0
        tokens = [p.chosen.n_tokens for p in prepared] + [p.rejected.n_tokens for p in prepared]

        cfg = dataclasses.replace(acfg, steps=steps, batch_pairs=0)
        marks: list[tuple[float, float]] = []
        start = (time.perf_counter(), time.process_time())
        result = train_vector(policy, prepared, cfg,
                              progress=lambda stage, info: marks.append((time.perf_counter(), time.process_time())))
        cached = [b[0] - a[0] for a, b in zip([start] + marks[:-1], marks)]
        cached_cpu = [b[1] - a[1] for a, b in zip([start] + marks[:-1], marks)]
        peak_cached_mb = peak.mb()  # load + prepare + cached steps: what `edge-agent adapt` itself goes through

        encs = [(policy.encode(p.messages, p.chosen), policy.encode(p.messages, p.rejected)) for p in pairs]
        vector = torch.nn.Parameter(torch.zeros(policy.hidden_size))
        opt = torch.optim.AdamW([vector], lr=acfg.learning_rate, weight_decay=acfg.weight_decay)
        full, full_cpu, full_losses = [], [], []
        for _ in range(full_steps):
            start, cpu0 = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for (enc_c, enc_r), prep in zip(encs, prepared):
                pc, pr = policy.full_logp(enc_c, vector), policy.full_logp(enc_r, vector)
                losses, _ = dpo_loss(pc[None], pr[None], torch.tensor([prep.ref_chosen], dtype=pc.dtype),
                                     torch.tensor([prep.ref_rejected], dtype=pr.dtype), acfg.beta)
                (losses[0] / len(encs)).backward()
                step_loss += float(losses[0].detach()) / len(encs)
            opt.step()
            full.append(time.perf_counter() - start)
            full_cpu.append(time.process_time() - cpu0)
            full_losses.append(step_loss)
        n_params = checkpoint_parameters(hf_dir)
        cached_mb = sum(_tensor_mb(p.chosen) + _tensor_mb(p.rejected) for p in prepared)
        peak_mb = peak.mb()
    finally:
        torch.set_num_threads(saved_threads)
    c, f = median(cached), median(full) if full else None
    wall_all, cpu_all = prepare_s + sum(cached) + sum(full), prepare_cpu + sum(cached_cpu) + sum(full_cpu)
    return {
        "available": True, "hf_dir": str(hf_dir), "dtype": dtype, "torch_threads": max(1, threads),
        "parameters": n_params, "layer": acfg.layer, "pairs": len(pairs), "sequence_tokens": tokens,
        "load_seconds": round(load_s, 3),
        "prepare_seconds_per_pair": round(prepare_s / max(len(pairs), 1), 4),
        "prepare_cpu_seconds_per_pair": round(prepare_cpu / max(len(pairs), 1), 4),
        "cached_inputs_mb": round(cached_mb, 2),
        "cached": {"steps": len(cached), "step_seconds": round(c, 4), "step_seconds_all": [round(x, 4) for x in cached],
                   "step_cpu_seconds": round(median(cached_cpu), 4),
                   "pairs_per_second": _ratio(len(pairs), c), "first_loss": result.losses[0]},
        "full_forward": {"steps": len(full), "step_seconds": None if f is None else round(f, 4),
                         "step_seconds_all": [round(x, 4) for x in full],
                         "step_cpu_seconds": round(median(full_cpu), 4) if full_cpu else None,
                         "pairs_per_second": None if f is None else _ratio(len(pairs), f),
                         "first_loss": full_losses[0] if full_losses else None},
        "full_to_cached_step_ratio": None if f is None else _ratio(f, c),
        # CPU seconds of this process / wall seconds: near the thread count when the stage had its cores, far
        # below it when other processes took them (the wall times are then inflated, the CPU times are not)
        "cpu_share_of_wall": _ratio(cpu_all, wall_all),
        "peak_rss_mb": peak_mb, "peak_rss_cached_path_mb": peak_cached_mb, "peak_rss_method": peak.method,
        "peak_rss_growth_mb": None if rss0 is None else round(peak_mb - rss0, 1),
        "rss_before_load_mb": None if rss0 is None else round(rss0, 1),
        "rss_after_load_mb": None if rss_loaded is None else round(rss_loaded, 1),
        "fit_estimate_mb": round(estimate_bytes(n_params, dtype) / (1 << 20), 1),
        "note": "one step = every pair (chosen + rejected) forward and backward; cached = the product's path "
                "(layer-L inputs prepared once, `prepare_seconds_per_pair`); full_forward = the whole model "
                "every step (no trainer in the product does this: it is the cost the cache avoids)",
    }


def _phase_two(model, cfg: Config, segments: list[Segment], sizes: "Sizes") -> dict[str, Any]:
    """The Phase Two rows of the bench on the configured model's checkpoint (hf/), when it has one and torch
    is installed."""
    hf = model.hf_dir
    if hf is None or not (Path(hf) / "config.json").is_file():
        return {"available": False, "reason": f"model {model.name!r} has no hf/ checkpoint (Phase Two needs one)"}
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return {"available": False, "reason": f"torch/transformers not installed ({e.name}): extra `adapt`"}
    from edge_agent.vlm.llama_cpp import default_threads

    pairs = phase_two_pairs(segments, cfg.writer.window_segments, sizes.phase_two_pairs, f"bench-{time.time_ns()}")
    return phase_two_cost(Path(hf), pairs, cfg.adapt, steps=sizes.phase_two_steps,
                          full_steps=sizes.phase_two_steps, dtype="float32",
                          threads=cfg.model.n_threads or default_threads())


# ---------------------------------------------------------------- entry point

def run_bench(cfg: Config, *, quick: bool = False, model_dir: Path | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the on-device path on the configured model (or the model folder `model_dir`); JSON-ready dict.

    `progress(stage)` is called at the start of each stage (names in STAGES). Raises ModelError when the
    model cannot be resolved or loaded. quick=True uses smaller sizes (about a minute on the tiny model).
    """
    from edge_agent.models import resolve
    from edge_agent.synth import generate
    from edge_agent.vlm.factory import context_size
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
                                  n_ctx=context_size(cfg), n_gpu_layers=cfg.model.n_gpu_layers,
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
            stage("writer_vs_llama")
            result["writer_vs_llama"] = _writer_vs_llama(backend, bcfg.writer, segments[: sizes.writer_segments])
            stage("segmenter")
            result["segmenter"] = _segmenter_vs_decode(paths.video, bcfg)
            stage("ingest")
            result["ingest"] = _ingest(backend, bcfg, paths.video, home)
            stage("ask")
            result["ask"] = _ask(backend, bcfg, home, sizes, questions, cache_dir=cfg.cache_dir)
            stage("store")
            result["store"] = _store(home, sizes, questions, bcfg.qa)
            stage("retrieval")
            result["retrieval"] = _retrieval(home, sizes, bcfg, cfg.cache_dir)
            stage("resources")
            result["resources"] = _resources(backend, model, cfg, sizes)
        stage("run_rss")
        result["run_rss"] = _run_rss(cfg, str(model_dir) if model_dir is not None else cfg.model.name, model, home)
        # after the llama.cpp model is closed, as `edge-agent adapt` releases it before training
        stage("phase_two")
        result["phase_two"] = _phase_two(model, bcfg, segments, sizes)
    end = time.perf_counter()
    ends = [t for _, t in marks[1:]] + [end]
    result["stage_seconds"] = {name: round(e - t, 3) for (name, t), e in zip(marks, ends)}
    result["seconds"] = round(end - started, 3)
    result["environment"]["load_average_1m_end"] = _load_average()
    return result


# ---------------------------------------------------------------- a table for people

def fmt_number(x: Any, nd: int = 3) -> str:
    """A measured value for the printed tables: '-' when missing, 3 significant digits, thousands grouped."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return str(x)


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, raw numbers, ratio) rows for a printed table (`tools/bench_report.py`, the CLI)."""
    f = fmt_number
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
    wl = result.get("writer_vs_llama")
    if wl:
        rows.append(("writer / llama.cpp alone, same prompts (goal <= 1.05)",
                     f"{f(wl['writer_seconds'])} / {f(wl['llama_cpp_alone_seconds'])} s, "
                     f"{wl['generate_calls']} calls", f(wl["writer_to_llama_cpp_ratio"])))
        rows.append(("backend, caches off / llama.cpp alone (Python overhead)",
                     f"{f(wl['backend_no_cache_seconds'])} / {f(wl['llama_cpp_alone_seconds'])} s",
                     f(wl["backend_no_cache_to_llama_cpp_ratio"])))
    sg = result.get("segmenter")
    if sg:
        rows.append(("segmenter / bare OpenCV decode, throughput (goal >= 0.9)",
                     f"{f(sg['segmenter_seconds'])} / {f(sg['bare_decode_seconds'])} s, {sg['frames']} frames",
                     f(sg["segmenter_throughput_ratio"])))
    if a:
        w = a["warm"]
        rows.append(("ask (warm): everything but the model (goal <= 10 %)", f"{f(w['total_ms'] - w['model_ms'])} ms",
                     f"{1.0 - w['shares']['model']:.1%}"))
    rv = result.get("retrieval")
    if rv:
        n = rv["memories"]
        for part in ("fts5", "vector", "fused"):
            rows.append((f"retrieval {part} at {n:,} memories, p50 / p95", f"{f(rv[part]['p50_ms'])} / "
                         f"{f(rv[part]['p95_ms'])} ms", ""))
        rows.append((f"vector index / exact scan from SQLite at {n:,}, p50", f"{f(rv['vector']['p50_ms'])} / "
                     f"{f(rv['exact_scan']['p50_ms'])} ms", f(rv["vector_to_exact_scan_p50_ratio"])))
        rows.append((f"vector index recall@8 vs exact scan at {n:,}", f"min {f(rv['recall_at_8']['min'])}",
                     f(rv["recall_at_8"]["mean"])))
        rows.append(("vector index RAM / disk per memory", f"{f(rv['index']['bytes_per_memory_ram'])} B / "
                     f"{f(rv['build']['db_bytes_per_memory'])} B", ""))
    p2 = result.get("phase_two")
    if p2 and p2.get("available"):
        c, fw = p2["cached"], p2["full_forward"]
        rows.append((f"Phase Two DPO step ({p2['pairs']} pairs), full forward / cached layer-{p2['layer']} inputs",
                     f"{f(fw['step_seconds'])} / {f(c['step_seconds'])} s", f(p2["full_to_cached_step_ratio"])))
        rows.append(("Phase Two pairs per second, cached / full forward",
                     f"{f(c['pairs_per_second'])} / {f(fw['pairs_per_second'])}", ""))
        rows.append(("Phase Two peak RSS / fit estimate", f"{f(p2['peak_rss_mb'])} / {f(p2['fit_estimate_mb'])} MB",
                     f(_ratio(p2["peak_rss_mb"], p2["fit_estimate_mb"]))))
    rr = result.get("run_rss")
    if rr and rr.get("available"):
        rows.append((f"peak RSS of `run`, {rr['clip_minutes']:g}-min clip, beyond the model files (goal <= 250 MB)",
                     f"{f(rr['peak_rss_mb'])} MB - {f(rr['model_files_mb'])} MB = {f(rr['beyond_model_files_mb'])} MB",
                     ""))
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


__all__ = ["run_bench", "summary_rows", "phase_two_cost", "phase_two_pairs", "PeakRss", "STAGES", "QUICK", "FULL",
           "Sizes"]
