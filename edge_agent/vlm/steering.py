"""Steering vectors (the Phase Two adapter) on disk and their fit to a model: safetensors, control-vector GGUF.

Two file formats hold the same `SteeringVector`:

* safetensors (the project's own format): tensor "direction" (float32, hidden size) holds the *unscaled*
  vector; string metadata holds layer, hidden_size, base_model_hash, scale and adapter_id. Round-trips exactly.
* llama.cpp control-vector GGUF: architecture "controlvector", one tensor "direction.<L>" (float32, 1-D), KVs
  `controlvector.model_hint` and `controlvector.layer_count`, which is what `llama-cli --control-vector FILE`
  loads (llama.cpp's `common_control_vector_load` reads only the tensors: names "direction.<N>", N >= 1, F32, 1-D).
  The tensor holds the vector with the scale FOLDED IN (scale * vector), so stock llama.cpp applies exactly what
  our backend applies. Our KVs `edge_agent.*` record the scale that was folded in, the base model hash and the
  adapter id; loading divides the scale back out (equal to the saved vector up to float32 rounding; a vector
  saved with scale 0 loads as zeros).

Layer semantics: the vector at layer L is added to the OUTPUT of transformer block L (0-indexed), i.e. a torch
forward hook on `model.language_model.layers[L]`; llama.cpp calls that tensor "direction.L". llama.cpp has no
slot for L = 0, so valid layers are 1 .. n_layers-1.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from edge_agent.errors import AdapterError
from edge_agent.types import SteeringVector

FORMAT = "edge-agent-steering-v1"
CVEC_ARCH = "controlvector"

# Parsers of third-party formats raise these on malformed input; they become one-line AdapterErrors.
_PARSE_ERRORS = (ValueError, OSError, KeyError, IndexError, TypeError, struct.error)


def validate(vec: SteeringVector) -> None:
    """Shape and values of a vector on its own (no model needed)."""
    v = np.asarray(vec.vector)
    if v.ndim != 1 or v.shape[0] == 0:
        raise AdapterError(f"steering vector shape {tuple(v.shape)}: must be 1-D and non-empty")
    if not np.all(np.isfinite(v)):
        raise AdapterError("steering vector: contains NaN or infinite values")
    if not np.isfinite(vec.scale):
        raise AdapterError(f"steering vector scale={vec.scale!r}: must be finite")
    if vec.layer < 1:
        raise AdapterError(f"steering vector layer={vec.layer}: must be >= 1 (llama.cpp has no layer-0 slot)")


def check_compatible(vec: SteeringVector, *, hidden_size: int, n_layers: int, base_model_hash: str) -> None:
    """Raise AdapterError unless `vec` fits a model with this hidden size, depth and base model hash."""
    validate(vec)
    if vec.hidden_size != hidden_size:
        raise AdapterError(f"adapter {vec.adapter_id or '?'}: hidden size {vec.hidden_size} does not match "
                           f"the model's hidden size {hidden_size}")
    if not 1 <= vec.layer <= n_layers - 1:
        raise AdapterError(f"adapter {vec.adapter_id or '?'}: layer {vec.layer} out of range 1..{n_layers - 1} "
                           f"for a model with {n_layers} layers")
    if vec.base_model_hash != base_model_hash:
        raise AdapterError(f"adapter {vec.adapter_id or '?'}: base model hash {vec.base_model_hash!r} does not "
                           f"match the loaded model's {base_model_hash!r}")


# ---------------------------------------------------------------- safetensors

def save_safetensors(vec: SteeringVector, path: str | Path) -> Path:
    from safetensors.numpy import save_file

    validate(vec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "layer": str(int(vec.layer)),
        "hidden_size": str(vec.hidden_size),
        "base_model_hash": vec.base_model_hash,
        "scale": repr(float(vec.scale)),
        "adapter_id": vec.adapter_id or "",
    }
    save_file({"direction": np.ascontiguousarray(vec.vector, dtype=np.float32)}, str(path), metadata=meta)
    return path


def load_safetensors(path: str | Path) -> SteeringVector:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"adapter file {str(path)!r}: not found")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if "direction" not in f.keys():
                raise AdapterError(f"adapter file {str(path)!r}: no tensor 'direction' (has {list(f.keys())})")
            direction = f.get_tensor("direction")
    except SafetensorError as e:
        raise AdapterError(f"adapter file {str(path)!r}: not a safetensors file ({e})") from None
    missing = [k for k in ("layer", "hidden_size", "base_model_hash", "scale") if k not in meta]
    if missing:
        raise AdapterError(f"adapter file {str(path)!r}: metadata lacks {', '.join(missing)}")
    try:
        layer, hidden, scale = int(meta["layer"]), int(meta["hidden_size"]), float(meta["scale"])
    except ValueError:
        raise AdapterError(f"adapter file {str(path)!r}: bad metadata layer={meta['layer']!r} "
                           f"hidden_size={meta['hidden_size']!r} scale={meta['scale']!r}") from None
    if direction.dtype != np.float32 or direction.ndim != 1 or direction.shape[0] != hidden:
        raise AdapterError(f"adapter file {str(path)!r}: tensor 'direction' is {direction.dtype} "
                           f"{tuple(direction.shape)}, metadata says float32 ({hidden},)")
    vec = SteeringVector(vector=np.array(direction, dtype=np.float32), layer=layer, scale=scale,
                         base_model_hash=meta["base_model_hash"], adapter_id=meta.get("adapter_id") or None)
    _validate_loaded(vec, path)
    return vec


# ---------------------------------------------------------------- llama.cpp control vector GGUF

def save_control_vector(vec: SteeringVector, path: str | Path, *, model_hint: str = "qwen3vl") -> Path:
    """Write `direction.<layer>` = scale * vector, loadable by stock `llama-cli --control-vector`."""
    import gguf

    validate(vec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch=CVEC_ARCH)
    w.add_string(f"{CVEC_ARCH}.model_hint", model_hint)
    w.add_int32(f"{CVEC_ARCH}.layer_count", 1)  # number of direction tensors, as llama.cpp's cvector-generator writes
    w.add_string("edge_agent.format", FORMAT)
    w.add_float32("edge_agent.scale", float(vec.scale))
    w.add_string("edge_agent.base_model_hash", vec.base_model_hash)
    w.add_string("edge_agent.adapter_id", vec.adapter_id or "")
    w.add_tensor(f"direction.{int(vec.layer)}", vec.applied())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def load_control_vector(path: str | Path) -> SteeringVector:
    """Read a control-vector GGUF with exactly one direction tensor (ours, or llama.cpp's with one layer)."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"adapter file {str(path)!r}: not found")
    try:
        reader = gguf.GGUFReader(str(path))
        kv = {name: field.contents() for name, field in reader.fields.items()}
        tensors = [(t.name, np.array(t.data), t.tensor_type) for t in reader.tensors]
    except _PARSE_ERRORS as e:
        raise AdapterError(f"adapter file {str(path)!r}: not a readable GGUF ({type(e).__name__}: {e})") from None
    arch = kv.get("general.architecture")
    if arch != CVEC_ARCH:
        raise AdapterError(f"adapter file {str(path)!r}: architecture {arch!r}, expected {CVEC_ARCH!r}")
    directions = []
    for name, data, ttype in tensors:
        prefix, _, idx = name.partition(".")
        if prefix != "direction" or not idx.isdigit() or int(idx) < 1:
            raise AdapterError(f"adapter file {str(path)!r}: tensor {name!r} is not direction.<layer>=1..")
        if ttype != gguf.GGMLQuantizationType.F32 or data.ndim != 1:
            raise AdapterError(f"adapter file {str(path)!r}: tensor {name!r} must be 1-D F32")
        directions.append((int(idx), data.astype(np.float32)))
    if len(directions) != 1:
        raise AdapterError(f"adapter file {str(path)!r}: {len(directions)} direction tensors; "
                           "an edge-agent adapter has exactly one layer")
    layer, applied = directions[0]
    scale = float(kv.get("edge_agent.scale", 1.0))
    vector = applied / scale if scale != 0.0 else np.zeros_like(applied)
    vec = SteeringVector(vector=vector.astype(np.float32), layer=layer, scale=scale,
                         base_model_hash=str(kv.get("edge_agent.base_model_hash", "")),
                         adapter_id=str(kv.get("edge_agent.adapter_id", "")) or None)
    _validate_loaded(vec, path)
    return vec


# ---------------------------------------------------------------- either format by suffix

def save(vec: SteeringVector, path: str | Path) -> Path:
    """`.gguf` -> control vector, anything else -> safetensors."""
    return save_control_vector(vec, path) if Path(path).suffix == ".gguf" else save_safetensors(vec, path)


def load(path: str | Path) -> SteeringVector:
    return load_control_vector(path) if Path(path).suffix == ".gguf" else load_safetensors(path)


# the names the runtime and eval import
save_steering_vector = save
load_steering_vector = load


def _validate_loaded(vec: SteeringVector, path: Path) -> None:
    try:
        validate(vec)
    except AdapterError as e:
        raise AdapterError(f"adapter file {str(path)!r}: {e}") from None

