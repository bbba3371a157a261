"""Random-weight Qwen3-VL models with a real model's dimensions: what running the model costs, without its weights.

Compute and memory of a transformer depend on its dimensions, not on its weights, so a seeded random model with
Qwen3-VL-2B's exact shape (built by the tiny model's own builder, `export.tiny.make_tiny`, and exported and
quantized with the project's own exporter and quantizer, as the shipped GGUFs are) costs what the real one costs
per token and per frame. `edge-agent bench --shape qwen3-vl-2b` measures it (edge_agent/bench_shape.py).

Differences from the real model, none of which changes the cost of a token: the weights are random (so the memories
are nonsense and their length is capped by the bench); the tokenizer is the tiny model's byte-level BPE (about 1k
tokens; the rest of the 151,936-row embedding are unused ids), so a prompt tokenizes into a different number of
text tokens than Qwen's tokenizer would give; image tokens per frame are exact.

The dimensions are those of the published checkpoint's config.json (Qwen/Qwen3-VL-2B-Instruct). transformers'
own Qwen3VLConfig defaults are another model's (text 4096 x 32 layers, vision 1152 x 27 layers, deepstack
[8, 16, 24]), so every value is set here explicitly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from edge_agent.errors import ConfigError

SHAPE_VERSION = 1  # bump when a recipe changes: cached builds are rebuilt
SHAPE_FILE = "shape.json"

SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-vl-2b": {
        "source": "Qwen/Qwen3-VL-2B-Instruct config.json",
        # tiny_config's keyword arguments; patch 16, spatial merge 2, temporal patch 2 and the vision output
        # width (= text hidden size) are tiny_config's fixed Qwen3-VL layout.
        "dims": dict(hidden=2048, intermediate=6144, layers=28, heads=16, kv_heads=8, head_dim=128,
                     mrope_section=(24, 20, 20), max_positions=262144, rope_theta=5e6, tied=True,
                     vision_depth=24, vision_hidden=1024, vision_intermediate=4096, vision_heads=16,
                     deepstack=(5, 11, 17), vision_positions=2304),
        "vocab_size": 151936,
        "quant": "Q4_K_M",  # as the catalog's Qwen3VL-2B-Instruct-Q4_K_M.gguf
        "mmproj_outtype": "q8_0",  # as mmproj-Qwen3VL-2B-Instruct-Q8_0.gguf
        "catalog": "qwen3-vl-2b",  # whose capture profile the bench uses
    },
}


def shape_names() -> list[str]:
    return sorted(SHAPES)


def _spec(name: str) -> dict[str, Any]:
    if name not in SHAPES:
        raise ConfigError(f"shape {name!r}: unknown; known shapes: {', '.join(shape_names())}")
    return SHAPES[name]


def shape_dims(name: str, **overrides: Any) -> dict[str, Any]:
    """tiny_config's keyword arguments for shape `name` (plus `vocab_size`), with `overrides` applied (tests build
    a down-scaled model with the same builder). Unknown override keys raise ConfigError."""
    spec = _spec(name)
    dims = {**spec["dims"], "vocab_size": spec["vocab_size"]}
    unknown = sorted(set(overrides) - set(dims))
    if unknown:
        raise ConfigError(f"shape {name!r}: unknown dimension(s) {', '.join(unknown)}")
    dims.update(overrides)
    if sum(dims["mrope_section"]) != dims["head_dim"] // 2:
        raise ConfigError(f"shape {name!r}: mrope_section {dims['mrope_section']} must sum to head_dim/2")
    if any(not 0 <= i < dims["vision_depth"] for i in dims["deepstack"]):
        raise ConfigError(f"shape {name!r}: deepstack {dims['deepstack']} outside 0..{dims['vision_depth'] - 1}")
    return dims


def shape_config(name: str, ids: dict[str, int], **overrides: Any):
    """The transformers Qwen3VLConfig of shape `name` (special token ids from the tiny tokenizer); no weights."""
    from edge_agent.export.tiny import tiny_config

    dims = shape_dims(name, **overrides)
    vocab = dims.pop("vocab_size")
    return tiny_config(vocab, ids, **dims)


def _json_dims(dims: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dims.items()}


def shape_dir(home: str | Path, name: str) -> Path:
    """Where the bench caches shape `name`: <home>/bench/shapes/<name>/."""
    return Path(home).expanduser() / "bench" / "shapes" / name


def _parameters(hf_dir: Path) -> dict[str, int]:
    from edge_agent.export.hf_checkpoint import read_safetensors_index, weight_files

    refs = read_safetensors_index(weight_files(hf_dir))
    out = {"total": 0, "vision": 0, "text": 0}
    for name, ref in refs.items():
        n = math.prod(ref.shape) if ref.shape else 1
        out["total"] += n
        out["vision" if ".visual." in f".{name}" else "text"] += n
    return out


def build_shape(out_dir: str | Path, name: str, *, seed: int = 0, n_threads: int = 1,
                progress: Callable[[str, int, int], None] | None = None, **overrides: Any) -> dict[str, Any]:
    """Build shape `name` into OUT_DIR (hf/ in bfloat16, model.gguf quantized, mmproj.gguf) and return its
    shape.json record. Written to a temporary sibling folder and renamed at the end, so OUT_DIR is either the
    previous build or a complete new one."""
    from edge_agent.export.quantize import quantize
    from edge_agent.export.tiny import make_tiny
    from edge_agent.vlm.gguf_info import inspect_gguf

    spec = _spec(name)
    dims = shape_dims(name, **overrides)
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    marks: dict[str, float] = {}

    def step(stage: str, done: int, total: int) -> None:
        marks.setdefault(stage, time.perf_counter())  # the first event of a stage: the previous one ended
        if progress:
            progress(stage, done, total)

    try:
        start = time.perf_counter()
        hf, model_path, mmproj_path = make_tiny(
            tmp, seed, outtype="f16", progress=step, dtype="bfloat16", mmproj_outtype=spec["mmproj_outtype"],
            config=lambda vocab, ids: shape_config(name, ids, **overrides), name=f"edge-agent-shape-{name}")
        exported = time.perf_counter()
        f16_bytes = model_path.stat().st_size
        quantized = tmp / f".model.{spec['quant']}.gguf"
        step(f"quantize {spec['quant']}", 0, 1)
        quantize(model_path, quantized, spec["quant"], n_threads=n_threads)
        os.replace(quantized, model_path)  # the f16 text model is not kept (the bench runs the quantized one)
        done = time.perf_counter()
        text, proj = inspect_gguf(model_path), inspect_gguf(mmproj_path)
        init_end = marks.get("hash", exported)
        record = {
            "version": SHAPE_VERSION, "name": name, "source": spec["source"], "seed": seed,
            "dims": _json_dims(dims), "quant": spec["quant"], "mmproj_outtype": spec["mmproj_outtype"],
            "parameters": _parameters(hf),
            "files": {"model_bytes": model_path.stat().st_size, "mmproj_bytes": mmproj_path.stat().st_size,
                      "model_f16_bytes": f16_bytes, "model_file_type": text["file_type_name"],
                      "mmproj_file_type": proj["file_type_name"]},
            "build_seconds": {"init_and_save": round(init_end - start, 1),
                              "export": round(exported - init_end, 1),
                              "quantize": round(done - exported, 1), "total": round(done - start, 1)},
            "n_threads": n_threads, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / SHAPE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def cached_shape(out_dir: str | Path, name: str, **overrides: Any) -> dict[str, Any] | None:
    """The shape.json record of a complete build of `name` (same recipe) in OUT_DIR, else None."""
    out = Path(out_dir)
    try:
        record = json.loads((out / SHAPE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (record.get("version") != SHAPE_VERSION or record.get("name") != name
            or record.get("dims") != _json_dims(shape_dims(name, **overrides))):
        return None
    if not all((out / f).is_file() for f in ("model.gguf", "mmproj.gguf", "hf/config.json")):
        return None
    return record


def ensure_shape(out_dir: str | Path, name: str, *, rebuild: bool = False,
                 **kwargs: Any) -> tuple[dict[str, Any], bool]:
    """(shape.json record, built now?): reuse a complete build of the same recipe, else build it."""
    overrides = {k: v for k, v in kwargs.items() if k not in ("seed", "n_threads", "progress")}
    found = None if rebuild else cached_shape(out_dir, name, **overrides)
    if found is not None:
        return found, False
    return build_shape(out_dir, name, **kwargs), True


__all__ = ["SHAPES", "SHAPE_VERSION", "build_shape", "cached_shape", "ensure_shape", "shape_config", "shape_dims",
           "shape_dir", "shape_names"]
