"""`edge-agent bench --shape NAME`: what a real model's shape costs on this machine, measured on random weights.

Builds once (cached in <home>/bench/shapes/NAME/, see edge_agent/export/shapes.py) a seeded random Qwen3-VL with
the real model's dimensions, exported and quantized as the shipped files are (text Q4_K_M, vision projector Q8_0),
then measures it with the product's LlamaCppBackend at the capture settings of that model's profile
(models/catalog.toml: frame size, keyframes per segment, n_ctx):

  writer      the runtime's sliding writer window (k segments, frame cache on, KV prefix reuse) over a synthetic
              clip: per segment, the vision encoder, the prompt (image tokens and text tokens), decoding and
              sampling, timed inside the backend's own llama.cpp / mtmd calls; vision seconds per frame,
              prompt-eval and decode tokens per second, seconds per 10 s segment and the real-time factor
              (segment seconds / segment length: below 1 keeps up).
  phase_two   Phase Two's DPO step on the same windows (bench.phase_two_cost) with the checkpoint in bfloat16:
              the cached layer-L path against a full forward, pairs per second, the stage's peak RSS.

The memories are nonsense (random weights) and capped at SHAPE_MEMORY_TOKENS, a two-sentence memory; the window
keeps a synthetic-world caption for each earlier segment, as a working model's memory would be there. The
synthetic renderer draws 256x192 frames, so keyframes are scaled to what a 640x480 camera gives at the
profile's frame size (448 px: 448x320, 140 image tokens per temporal pair of frames). The tokenizer is the tiny
model's: text token counts differ from Qwen's, image token counts are exact.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from edge_agent.config import PROFILE_KEYS, Config
from edge_agent.config import replace as replace_cfg
from edge_agent.types import Frame, Segment
from edge_agent.vlm.factory import context_size

SHAPE_STAGES = ("build", "load", "writer", "phase_two")
SHAPE_MEMORY_TOKENS = 40  # the writer's memory cap in the shape bench: about two sentences
CAMERA = (640, 480)  # the camera frame the profile's frame_size downscales (4:3)
SHAPE_BENCH_VERSION = 1


class _Probe:
    """Times the backend's llama.cpp and mtmd calls by phase while the writer runs; `take()` returns and resets.

    prompt (inside `_evaluate`): text decode batches, image chunks decoded into the KV cache; the vision
    encoder (a frame-cache miss in `_embedding`); after the prompt: one-token decodes and sampling (grammar)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self._saved = {k: getattr(backend, k) for k in ("_lc", "_mtmd", "_evaluate", "_embedding")}
        self._in_prompt = False
        self.t: dict[str, float] = {}
        self.n: dict[str, int] = {}
        lc, mtmd, probe = backend._lc, backend._mtmd, self

        class _Lc:
            def __getattr__(self, name):
                return getattr(lc, name)

            def llama_decode(self, ctx, batch):
                start = time.perf_counter()
                rc = lc.llama_decode(ctx, batch)
                probe._add("text_prefill" if probe._in_prompt else "decode", time.perf_counter() - start,
                           int(batch.n_tokens))
                return rc

            def llama_sampler_sample(self, *args):
                start = time.perf_counter()
                tok = lc.llama_sampler_sample(*args)
                probe._add("sample", time.perf_counter() - start, 1)
                return tok

        class _Mtmd:
            def __getattr__(self, name):
                return getattr(mtmd, name)

            def mtmd_helper_decode_image_chunk(self, mctx, ctx, chunk, *args):
                start = time.perf_counter()
                rc = mtmd.mtmd_helper_decode_image_chunk(mctx, ctx, chunk, *args)
                probe._add("image_prefill", time.perf_counter() - start,
                           int(mtmd.mtmd_input_chunk_get_n_tokens(chunk)))
                return rc

        evaluate, embedding = backend._evaluate, backend._embedding

        def _evaluate(units, want_logits):
            self._in_prompt = True
            try:
                return evaluate(units, want_logits)
            finally:
                self._in_prompt = False

        def _embedding(unit):
            before = backend.stats["image_encodes"]
            start = time.perf_counter()
            out = embedding(unit)
            if backend.stats["image_encodes"] > before:
                self._add("vision_encode", time.perf_counter() - start, 1)
                self.n["frames_encoded"] = self.n.get("frames_encoded", 0) + len(unit.ident) - 1
                self.n["image_tokens_encoded"] = self.n.get("image_tokens_encoded", 0) + unit.n_tokens
            return out

        backend._lc, backend._mtmd, backend._evaluate, backend._embedding = _Lc(), _Mtmd(), _evaluate, _embedding

    def _add(self, key: str, seconds: float, count: int) -> None:
        self.t[key] = self.t.get(key, 0.0) + seconds
        self.n[key] = self.n.get(key, 0) + count

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        t, n = self.t, self.n
        self.t, self.n = {}, {}
        return t, n

    def close(self) -> None:
        for k, v in self._saved.items():
            if k in ("_evaluate", "_embedding"):
                self.backend.__dict__.pop(k, None)  # back to the class's methods
            else:
                setattr(self.backend, k, v)


def camera_segments(segments: list[Segment], frame_size: int) -> list[Segment]:
    """The segments with each keyframe scaled to what a CAMERA frame gives at `frame_size` (the segmenter's
    target size: longest side frame_size, sides multiples of 32)."""
    import cv2

    from edge_agent.capture.segmenter import target_size

    w, h = target_size(CAMERA[0], CAMERA[1], frame_size)
    out = []
    for s in segments:
        frames = [Frame(f.index, f.t, f.image if f.image.shape[:2] == (h, w) else
                        cv2.resize(f.image, (w, h), interpolation=cv2.INTER_LINEAR)) for f in s.keyframes]
        out.append(dataclasses.replace(s, keyframes=frames))
    return out


def profile_config(cfg: Config, catalog_name: str) -> tuple[Config, dict[str, Any], str]:
    """`cfg` with the capture/model/writer settings of `catalog_name`'s profile (the shipped settings), except
    model.n_threads, which stays the caller's (the machine's, not the device's); (config, profile, label)."""
    from edge_agent.models import model_profile

    found = model_profile(catalog_name, cfg.home)
    profile, label = found if found is not None else ({}, "no profile (built-in defaults)")
    out = cfg
    for key, value in profile.items():
        if key not in PROFILE_KEYS or key == "n_threads":
            continue
        section, field = PROFILE_KEYS[key].split(".")
        out = replace_cfg(out, section, **{field: value})
    return out, dict(profile), label


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def _segment_row(seg: Segment, window: int, wall: float, t: dict[str, float], n: dict[str, int],
                 completion: int) -> dict[str, Any]:
    parts = {k: t.get(k, 0.0) for k in ("vision_encode", "image_prefill", "text_prefill", "decode", "sample")}
    other = max(wall - sum(parts.values()), 0.0)
    return {"index": seg.index, "keyframes": len(seg.keyframes), "window_segments": window,
            "wall_seconds": round(wall, 4),
            **{f"{k}_seconds": round(v, 4) for k, v in parts.items()}, "other_seconds": round(other, 4),
            "frames_encoded": n.get("frames_encoded", 0), "chunks_encoded": n.get("vision_encode", 0),
            "image_tokens": n.get("image_prefill", 0), "text_prompt_tokens": n.get("text_prefill", 0),
            "decode_tokens": n.get("decode", 0), "sample_calls": n.get("sample", 0), "completion_tokens": completion}


def _write_window(backend, bcfg: Config, segments: list[Segment], stream_key: str) -> dict[str, Any]:
    """The runtime's writer window over `segments`, timed per segment and per phase inside the backend."""
    from edge_agent.memory import MemoryWriter, WindowEntry

    from edge_agent.bench import _captions

    wcfg = bcfg.writer
    k = wcfg.window_segments
    stand_in = _captions(len(segments))
    probe = _Probe(backend)
    gens: list = []
    generate = backend.generate

    def counted(*a, **kw):
        g = generate(*a, **kw)
        gens.append(g)
        return g

    backend.generate = counted
    rows = []
    try:
        writer = MemoryWriter(backend, wcfg, stream_key=stream_key)
        window: deque = deque(maxlen=max(k - 1, 1))
        probe.take()
        for i, seg in enumerate(segments):
            gens.clear()
            start, cpu0 = time.perf_counter(), time.process_time()
            result = writer.write(list(window), seg)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
            t, n = probe.take()
            rows.append(_segment_row(seg, min(len(window) + 1, k), wall, t, n,
                                     sum(g.n_completion_tokens for g in gens)))
            rows[-1]["cpu_seconds"] = round(cpu, 4)
            # a working model's memory stands in where the random model's reply is unusable
            window.append(WindowEntry(seg, result.text or stand_in[i]))
    finally:
        backend.__dict__.pop("generate", None)
        probe.close()
    return _writer_summary(rows, bcfg)


def _writer_summary(rows: list[dict[str, Any]], bcfg: Config) -> dict[str, Any]:
    k, seg_s = bcfg.writer.window_segments, bcfg.capture.segment_seconds

    def total(key: str, rs=rows) -> float:
        return sum(r[key] for r in rs)

    # steady state: the window is full and has slid (its oldest segment dropped), so no KV prefix survives
    # but the system prompt; while it still grows, the earlier segments' tokens are reused from the KV cache
    steady = [r for i, r in enumerate(rows) if i >= k] or rows[-1:]
    mean = {key: round(total(key, steady) / len(steady), 4) for key in
            ("wall_seconds", "vision_encode_seconds", "image_prefill_seconds", "text_prefill_seconds",
             "decode_seconds", "sample_seconds", "other_seconds")}
    cpu_mean = round(total("cpu_seconds", steady) / len(steady), 4)
    counts = {key: round(total(key, steady) / len(steady), 1) for key in
              ("frames_encoded", "image_tokens", "text_prompt_tokens", "decode_tokens", "completion_tokens")}
    wall = mean["wall_seconds"]
    shares = {key[:-8]: (v / wall if wall else 0.0) for key, v in mean.items() if key != "wall_seconds"}
    prompt_tokens = total("image_tokens") + total("text_prompt_tokens")
    prompt_s = total("image_prefill_seconds") + total("text_prefill_seconds")
    per_token = total("decode_seconds") / total("decode_tokens") if total("decode_tokens") else None
    sample_tok = total("sample_seconds") / max(total("sample_calls"), 1)
    cap = bcfg.writer.max_memory_tokens
    out = {
        "segments": len(rows), "window_segments": k, "segment_seconds": seg_s,
        "frame_size": bcfg.capture.frame_size, "keyframes_per_segment": bcfg.capture.keyframes_per_segment,
        "max_memory_tokens": cap, "n_ctx": context_size(bcfg),
        "vision_encode_seconds_per_frame": (round(total("vision_encode_seconds") / total("frames_encoded"), 4)
                                            if total("frames_encoded") else None),
        "vision_encode_seconds_per_chunk": (round(total("vision_encode_seconds") / total("chunks_encoded"), 4)
                                            if total("chunks_encoded") else None),
        "frames_per_chunk": (round(total("frames_encoded") / total("chunks_encoded"), 2)
                             if total("chunks_encoded") else None),
        "prompt_eval_tokens_per_second": _rate(prompt_tokens, prompt_s),
        "prompt_eval_image_tokens_per_second": _rate(total("image_tokens"), total("image_prefill_seconds")),
        "prompt_eval_text_tokens_per_second": _rate(total("text_prompt_tokens"), total("text_prefill_seconds")),
        "decode_tokens_per_second": None if per_token is None else _rate(1.0, per_token),
        "sample_ms_per_token": round(1000 * sample_tok, 3),
        "steady_segments": len(steady),
        "seconds_per_segment": wall,
        "real_time_factor": round(wall / seg_s, 4) if seg_s else None,
        "keeps_up": bool(wall < seg_s),
        "steady_mean": {**mean, **counts, "cpu_seconds": cpu_mean},
        # CPU seconds of the process / wall seconds over all segments: about n_threads when llama.cpp had its
        # cores; well below when other processes took them (wall times inflated, CPU times not)
        "cpu_share_of_wall": round(total("cpu_seconds") / total("wall_seconds"), 3) if total("wall_seconds") else None,
        "steady_shares": shares,
        "per_segment": rows,
        "note": "real_time_factor = steady seconds per segment / segment length (< 1 keeps up; the inverse "
                "of the bench's ingest.realtime_factor). Rates are over every segment; steady = segments "
                "written after the window of k segments has slid (the runtime's state after the first k).",
    }
    if per_token is not None:  # the same window when a memory has another length (random weights pick theirs)
        out["derived_by_memory_tokens"] = {}
        for at in (cap, 150):
            extra = (at - counts["completion_tokens"]) * (per_token + sample_tok)
            out["derived_by_memory_tokens"][str(at)] = {
                "seconds_per_segment": round(wall + extra, 3), "real_time_factor": round((wall + extra) / seg_s, 4)}
        out["derived_by_memory_tokens"]["note"] = (
            "derived, not measured: steady seconds + (N - measured completion tokens) x (decode + sampling per "
            f"token); {cap} = this bench's cap (about two sentences), 150 = writer.max_memory_tokens' default")
    return out


def run_shape_bench(cfg: Config, shape: str = "qwen3-vl-2b", *, progress: Callable[[str], None] | None = None,
                    phase_two: bool = True, rebuild: bool = False, extra_segments: int = 2,
                    phase_two_pairs: int = 1, phase_two_steps: int = 2, phase_two_full_steps: int = 1,
                    phase_two_window: int | None = None, dims: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build (or reuse) shape `shape` and measure it; a JSON-ready dict. `dims` overrides dimensions (tests run a
    down-scaled model through the same path); `phase_two_window` is the window length (segments) of the Phase
    Two pairs (default: the writer's k)."""
    import llama_cpp

    from edge_agent.bench import CAPTION_SEED, _clip_segments, _current_rss_mb, _load_average, _ratio
    from edge_agent.export.shapes import SHAPES, ensure_shape, shape_dir
    from edge_agent.synth import generate
    from edge_agent.vlm.llama_cpp import LlamaCppBackend, default_threads

    step = progress or (lambda stage: None)
    spec = SHAPES.get(shape)
    if spec is None:
        from edge_agent.errors import ConfigError

        raise ConfigError(f"--shape {shape!r}: unknown; known: {', '.join(sorted(SHAPES))}")
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []

    def stage(name: str) -> None:
        marks.append((name, time.perf_counter()))
        step(name)

    threads = cfg.model.n_threads or default_threads()
    bcfg, profile, label = profile_config(cfg, spec["catalog"])
    bcfg = replace_cfg(bcfg, "writer", max_memory_tokens=SHAPE_MEMORY_TOKENS, max_retries=0, candidate_share=0.0)
    result: dict[str, Any] = {"version": SHAPE_BENCH_VERSION, "shape": shape}
    try:
        from importlib.metadata import version

        lcp = version("llama_cpp_python")
    except Exception:
        lcp = getattr(llama_cpp, "__version__", "unknown")
    result["environment"] = {
        "cpu": _cpu_model(), "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(), "n_threads": threads, "mem_total_gb": _mem_total_gb(),
        "platform": platform.platform(), "python": platform.python_version(), "llama_cpp_python": lcp,
        "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
        "n_gpu_layers": bcfg.model.n_gpu_layers, "load_average_1m": _load_average(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result["settings"] = {"profile": label, **{k: profile[k] for k in sorted(profile)},
                          "frame_size": bcfg.capture.frame_size,
                          "keyframes_per_segment": bcfg.capture.keyframes_per_segment, "n_ctx": context_size(bcfg),
                          "window_segments": bcfg.writer.window_segments,
                          "max_memory_tokens": SHAPE_MEMORY_TOKENS, "max_retries": 0, "candidate_share": 0.0,
                          "image_cache_size": bcfg.model.image_cache_size or 64}

    stage("build")
    folder = shape_dir(cfg.home, shape)
    start = time.perf_counter()
    record, built = ensure_shape(folder, shape, rebuild=rebuild, n_threads=threads, **(dims or {}))
    result["build"] = {"folder": str(folder), "built_now": built, "seconds": round(time.perf_counter() - start, 1),
                       **record}

    stage("load")
    k = bcfg.writer.window_segments
    seg_s = bcfg.capture.segment_seconds
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-shape-") as tmp:
        minutes = max((k + extra_segments) * seg_s / 60.0, 0.25)
        paths = generate(seed=CAPTION_SEED, minutes=minutes, out_dir=Path(tmp) / "clip", segment_seconds=seg_s)
        segments = camera_segments(_clip_segments(paths.video, bcfg), bcfg.capture.frame_size)
    segments = segments[: k + extra_segments]
    rss0 = _current_rss_mb()
    start = time.perf_counter()
    backend = LlamaCppBackend(folder / "model.gguf", folder / "mmproj.gguf", n_threads=threads,
                              n_ctx=context_size(bcfg), n_gpu_layers=bcfg.model.n_gpu_layers,
                              image_cache_size=bcfg.model.image_cache_size or 64, seed=bcfg.model.seed,
                              name=f"shape:{shape}")
    load_s = time.perf_counter() - start
    with backend:
        rss1 = _current_rss_mb()
        result["load"] = {"seconds": round(load_s, 3), "n_layers": backend.n_layers,
                          "hidden_size": backend.hidden_size, "n_vocab": backend.n_vocab, "n_ctx": backend.n_ctx,
                          "rss_growth_mb": None if rss0 is None or rss1 is None else round(rss1 - rss0, 1),
                          "model_file_mb": round((folder / "model.gguf").stat().st_size / (1 << 20), 1),
                          "mmproj_file_mb": round((folder / "mmproj.gguf").stat().st_size / (1 << 20), 1)}
        stage("writer")
        result["writer"] = _write_window(backend, bcfg, segments, f"bench-shape-{time.time_ns()}")
        rss2 = _current_rss_mb()
        result["writer"]["rss_mb"] = None if rss2 is None else round(rss2, 1)

    stage("phase_two")
    if phase_two:
        result["phase_two"] = _shape_phase_two(folder / "hf", bcfg, segments, threads, phase_two_pairs,
                                               phase_two_steps, phase_two_full_steps, phase_two_window)
    else:
        result["phase_two"] = {"available": False, "reason": "skipped (phase_two=False)"}
    end = time.perf_counter()
    ends = [t for _, t in marks[1:]] + [end]
    result["stage_seconds"] = {name: round(e - t, 3) for (name, t), e in zip(marks, ends)}
    result["seconds"] = round(end - started, 3)
    result["environment"]["load_average_1m_end"] = _load_average()
    w = result["writer"]
    result["summary"] = {"seconds_per_segment": w["seconds_per_segment"], "real_time_factor": w["real_time_factor"],
                         "vision_encode_seconds_per_frame": w["vision_encode_seconds_per_frame"],
                         "prompt_eval_tokens_per_second": w["prompt_eval_tokens_per_second"],
                         "decode_tokens_per_second": w["decode_tokens_per_second"], "n_threads": threads,
                         "dpo_step_full_to_cached_ratio": result["phase_two"].get("full_to_cached_step_ratio"),
                         "cpu": result["environment"]["cpu"], "peak_rss_phase_two_mb":
                         result["phase_two"].get("peak_rss_mb"),
                         "vision_share_of_segment": _ratio(w["steady_mean"]["vision_encode_seconds"],
                                                           w["seconds_per_segment"]),
                         "writer_cpu_share_of_wall": w["cpu_share_of_wall"],
                         "phase_two_cpu_share_of_wall": result["phase_two"].get("cpu_share_of_wall")}
    return result


def _shape_phase_two(hf: Path, bcfg: Config, segments: list[Segment], threads: int, n_pairs: int, steps: int,
                     full_steps: int, window: int | None) -> dict[str, Any]:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return {"available": False, "reason": f"torch/transformers not installed ({e.name}): extra `adapt`"}
    from edge_agent.adapt.fit import native_bf16, plan
    from edge_agent.bench import phase_two_cost, phase_two_pairs
    from edge_agent.errors import ModelError

    try:
        fit = plan(hf, "bfloat16")
    except ModelError as e:  # not enough memory here: report the estimate and why, measure nothing
        from edge_agent.adapt.fit import available_bytes, checkpoint_parameters, estimate_bytes

        n = checkpoint_parameters(hf)
        return {"available": False, "reason": str(e), "parameters": n,
                "fit_estimate_mb": round(estimate_bytes(n, "bfloat16") / (1 << 20), 1),
                "free_mb": None if available_bytes() is None else round(available_bytes() / (1 << 20), 1)}
    k = window or bcfg.writer.window_segments
    pairs = phase_two_pairs(segments, k, n_pairs, f"bench-shape-p2-{time.time_ns()}")
    out = phase_two_cost(hf, pairs, bcfg.adapt, steps=steps, full_steps=full_steps, dtype="bfloat16",
                         threads=threads)
    out["window_segments"] = min(k, len(segments))
    out["bf16_native"] = native_bf16()
    out["fit"] = fit.as_dict()
    return out


def shape_summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, raw numbers, ratio) rows for the CLI's table."""
    from edge_agent.bench import fmt_number as f

    env, w, b = result["environment"], result["writer"], result["build"]
    rows = [("machine", f"{env['cpu']}, {env['cpu_count']} cores, {env['n_threads']} llama.cpp thread(s)", ""),
            ("shape", f"{result['shape']}: {b['parameters']['total'] / 1e9:.2f}e9 parameters, text "
                      f"{b['files']['model_file_type']} {b['files']['model_bytes'] / 1e9:.2f} GB, mmproj "
                      f"{b['files']['mmproj_file_type']} {b['files']['mmproj_bytes'] / 1e9:.2f} GB", ""),
            (f"vision encoder, s per frame ({w['frame_size']} px, {f(w['frames_per_chunk'])} frames a chunk)",
             f"{f(w['vision_encode_seconds_per_frame'])} s", ""),
            ("prompt eval, tokens/s (image / text)", f"{f(w['prompt_eval_image_tokens_per_second'])} / "
                                                     f"{f(w['prompt_eval_text_tokens_per_second'])}",
             f(w["prompt_eval_tokens_per_second"])),
            ("decode, tokens/s", f"{f(w['decode_tokens_per_second'])}", ""),
            (f"seconds per {f(w['segment_seconds'])} s segment (window of {w['window_segments']})",
             f"{f(w['seconds_per_segment'])} s", f"RTF {f(w['real_time_factor'])}")]
    p2 = result.get("phase_two") or {}
    if p2.get("available"):
        rows.append((f"Phase Two DPO step, full forward / cached ({p2['dtype']}, {p2['pairs']} pair)",
                     f"{f(p2['full_forward']['step_seconds'])} / {f(p2['cached']['step_seconds'])} s",
                     f(p2["full_to_cached_step_ratio"])))
        rows.append(("Phase Two peak RSS / fit estimate",
                     f"{f(p2['peak_rss_mb'])} / {f(p2['fit_estimate_mb'])} MB", ""))
    elif p2:
        rows.append(("Phase Two", p2.get("reason", "-"), ""))
    return rows


__all__ = ["SHAPE_STAGES", "run_shape_bench", "shape_summary_rows", "camera_segments", "profile_config"]
