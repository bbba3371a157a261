"""Quantizing an exported text GGUF (Q4_K_M / Q5_K_M / Q8_0) through llama.cpp's quantizer, bound by llama-cpp-python.

`llama_model_quantize(in, out, params)` is the same code `llama-quantize` runs. Its parameters carry an optional
importance matrix as an array of {tensor name, float values, count} ending with a NULL name; this module reads
the two file formats `llama-imatrix` writes (GGUF with `<tensor>.in_sum2` / `<tensor>.counts`, and the legacy
binary `.dat`) into that array, normalised exactly as `llama-quantize` does, and records the imatrix in the
output's `quantize.imatrix.*` keys as `llama-quantize` does.

Only the text model is quantized; the vision projector stays as exported (f16 or q8_0 via `export --outtype`).
Tensors whose rows do not divide into K-quant blocks of 256 (e.g. the tiny model's width 64) get llama.cpp's
fallback types (Q5_0/Q5_1/Q8_0), so every type works on every model.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.errors import ConfigError, ModelError
from edge_agent.export.gguf_export import Progress
from edge_agent.vlm.gguf_info import inspect_gguf

QUANT_TYPES = ("Q4_K_M", "Q5_K_M", "Q8_0")


@dataclass
class Imatrix:
    """Per-tensor importance (mean squared activation of each input column), as llama-quantize hands it over."""

    values: dict[str, np.ndarray]  # GGUF tensor name -> float32 values (n_in, or n_expert * n_in)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0


def load_imatrix(path: str | Path) -> Imatrix:
    """Read an importance matrix written by `llama-imatrix` (GGUF or legacy .dat) -> Imatrix. ModelError if unusable."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: imatrix file not found")
    with open(p, "rb") as f:
        magic = f.read(4)
    imx = _load_gguf_imatrix(p) if magic == b"GGUF" else _load_legacy_imatrix(p)
    if not imx.values:
        raise ModelError(f"{p}: imatrix holds no entries")
    for name, v in imx.values.items():
        if not np.all(np.isfinite(v)):
            raise ModelError(f"{p}: imatrix entry {name} holds non-finite values")
    return imx


def _load_gguf_imatrix(p: Path) -> Imatrix:
    import gguf

    try:
        reader = gguf.GGUFReader(p, "r")
    except Exception as e:
        raise ModelError(f"{p}: corrupt imatrix GGUF") from e
    fields = reader.fields
    meta = {k: fields[k].contents() for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")
            if k in fields}
    if len(meta) < 3:
        raise ModelError(f"{p}: imatrix GGUF lacks imatrix.datasets / chunk_count / chunk_size metadata")
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    values = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise ModelError(f"{p}: imatrix entry {name} has sums without counts or counts without sums")
        s, c = sums[name], np.rint(counts[name])
        # One count per expert (1 for dense tensors): mean = sum / count; experts never seen get 1.
        per = s.reshape(len(c), -1)
        values[name] = np.where(c[:, None] > 0, per / np.maximum(c, 1)[:, None], 1.0).astype(np.float32).reshape(-1)
    return Imatrix(values, [str(d) for d in meta["imatrix.datasets"]], int(meta["imatrix.chunk_count"]))


def _load_legacy_imatrix(p: Path) -> Imatrix:
    data = p.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ModelError(f"{p}: not an imatrix file (neither GGUF nor a complete legacy .dat)")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise ModelError(f"{p}: not an imatrix file (neither GGUF nor legacy .dat)")
    values = {}
    for _ in range(n_entries):
        (n,) = take("<i")
        name = take(f"<{n}s")[0].decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise ModelError(f"{p}: imatrix entry {name} is empty")
        v = np.array(take(f"<{nval}f"), dtype=np.float32)
        values[name] = v / ncall if ncall > 0 else v  # legacy files store mean * ncall
    chunk_count, datasets = 0, []
    if pos + 4 <= len(data):
        (chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (n,) = take("<i")
            if n > 0:
                datasets.append(take(f"<{n}s")[0].decode("utf-8", "replace"))
    return Imatrix(values, datasets, chunk_count)


def _kv_override(llama_cpp, key: str, value: int | str):
    kv = llama_cpp.llama_model_kv_override()
    kv.key = key.encode()
    if isinstance(value, int):
        kv.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
        kv.value.val_i64 = value
    else:
        kv.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
        kv.value.val_str = value.encode()[:127]
    return kv


_GGML_LOG_LEVEL_ERROR = 3


@contextlib.contextmanager
def _captured_llama_log(llama_cpp, *, echo: bool):
    """Route llama.cpp's log into a list of (level, text) for the duration; restore llama-cpp-python's handler."""
    from llama_cpp import _logger

    lines: list[tuple[int, str]] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        line = text.decode("utf-8", "replace") if text else ""
        lines.append((level, line))
        if echo:
            sys.stderr.write(line)

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def quantize(in_gguf: str | Path, out_gguf: str | Path, type: str = "Q4_K_M", imatrix: str | Path | None = None,
             *, n_threads: int = 0, verbose: bool = False, progress: Progress | None = None) -> Path:
    """Quantize a Qwen3-VL text GGUF to `type` ("Q4_K_M" | "Q5_K_M" | "Q8_0"); returns out_gguf.

    imatrix: optional importance-matrix file from llama-imatrix (GGUF or legacy .dat).
    n_threads: quantization threads (0: all cores). The edge-agent KVs (base model hash) are carried over.
    verbose: echo llama.cpp's per-tensor log to stderr (otherwise it is kept and only an error line is reported).
    Raises ConfigError for a bad type or paths, ModelError for an unsuitable input or a failed quantization.
    """
    qtype = str(type).upper()
    if qtype not in QUANT_TYPES:
        raise ConfigError(f"type={type!r}: expected one of {', '.join(QUANT_TYPES)}")
    src, dst = Path(in_gguf), Path(out_gguf)
    if src.resolve() == dst.resolve():
        raise ConfigError(f"{dst}: output would overwrite the input; choose another file")
    info = inspect_gguf(src)
    if info["architecture"] == "clip":
        raise ModelError(f"{src}: is an mmproj; only the text model is quantized (export the mmproj with --outtype f16 or q8_0)")
    if info["architecture"] != "qwen3vl":
        raise ModelError(f"{src}: architecture {info['architecture']!r}, expected a Qwen3-VL text model ('qwen3vl')")
    imx = load_imatrix(imatrix) if imatrix is not None else None

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = int(n_threads)
    keep_alive = []  # ctypes buffers the C call reads; they must outlive it
    if imx is not None:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imx.values) + 1))()
        for i, (name, values) in enumerate(imx.values.items()):
            buf = np.ascontiguousarray(values, dtype=np.float32)
            keep_alive.append(buf)
            entries[i].name = name.encode()
            entries[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = buf.size
        # the zero-initialised last entry (name NULL) ends the array
        kvs = [_kv_override(llama_cpp, "quantize.imatrix.file", str(imatrix)),
               _kv_override(llama_cpp, "quantize.imatrix.entries_count", len(imx.values))]
        if imx.datasets:
            kvs.append(_kv_override(llama_cpp, "quantize.imatrix.dataset", imx.datasets[0]))
        if imx.chunk_count > 0:
            kvs.append(_kv_override(llama_cpp, "quantize.imatrix.chunks_count", imx.chunk_count))
        overrides = (llama_cpp.llama_model_kv_override * (len(kvs) + 1))(*kvs)  # last: empty key ends it
        keep_alive += [entries, overrides]
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if progress:
        progress(dst.name, 0, 1)
    try:
        with _captured_llama_log(llama_cpp, echo=verbose) as log:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            errors = [line for level, line in log if level == _GGML_LOG_LEVEL_ERROR and line.strip()]
            why = f": {errors[-1].strip()[:200]}" if errors else ""
            raise ModelError(f"{src}: llama.cpp failed to quantize to {qtype} (code {rc}){why}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    if progress:
        progress(dst.name, 1, 1)
    return dst
