"""Will Phase Two fit this device? The frozen checkpoint's dtype and a memory estimate, checked before loading.

Owns: reading the checkpoint's parameter count from its safetensors headers (no tensor is loaded), choosing
the dtype for `adapt.dtype = "auto"`, estimating the resident memory of training, and refusing with a one-line
error that names what is needed and what is free. Qwen3-VL-2B's weights are ~8.5 GB in float32 (~2.1e9
parameters), ~4.3 GB in bfloat16, plus torch itself, the cached layer-L inputs and the steered tail's activations.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import ModelError

BYTES = {"float32": 4, "bfloat16": 2}
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}
# Beyond the weights: torch/transformers themselves (~0.4 GB resident), the tokenizer, the cached layer inputs
# and the tail's activations. The share of the weights is measured on the tiny and default models (see README).
OVERHEAD_BYTES = 600 << 20
OVERHEAD_SHARE = 0.15


def checkpoint_parameters(hf_dir: str | Path) -> int:
    """Number of parameters in the checkpoint's *.safetensors files, read from their headers only."""
    files = sorted(Path(hf_dir).glob("*.safetensors"))
    if not files:
        raise ModelError(f"hf checkpoint {str(hf_dir)!r}: no *.safetensors weights")
    n = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                if size > 100 << 20:
                    raise ValueError(f"header of {size} bytes")
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error) as e:
            raise ModelError(f"hf checkpoint file {str(f)!r}: not a safetensors file ({e})") from None
        for name, t in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in t.get("shape", []):
                count *= int(d)
            n += count
    return n


def estimate_bytes(n_params: int, dtype: str) -> int:
    """Resident memory of Phase Two with the frozen model in `dtype`."""
    weights = n_params * BYTES[dtype]
    return int(weights * (1 + OVERHEAD_SHARE) + OVERHEAD_BYTES)


def available_bytes() -> int | None:
    """Memory available to a new allocation now (Linux MemAvailable; None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def native_bf16() -> bool:
    """bfloat16 runs natively here: CUDA with bf16, or a CPU with AVX512-BF16 / AMX (else torch emulates it)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return True
    try:
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    except (AttributeError, RuntimeError):
        return False
    return "BF16" in cap or "AMX" in cap


@dataclass(frozen=True)
class FitPlan:
    dtype: str
    n_params: int
    need_bytes: int
    free_bytes: int | None

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "n_params": self.n_params, "need_gb": round(self.need_bytes / 1e9, 2),
                "free_gb": None if self.free_bytes is None else round(self.free_bytes / 1e9, 2)}


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def plan(hf_dir: str | Path, dtype: str = "auto", *, free: int | None = None,
         bf16_native: bool | None = None) -> FitPlan:
    """The dtype to load `hf_dir` in and the memory it needs; ModelError when it cannot fit.

    "auto": bfloat16 where it runs natively (half the memory), float32 elsewhere (exact parity with an f32 GGUF
    and faster on CPUs that emulate bf16), and bfloat16 anyway when only that fits. Call it after the llama.cpp
    model was released: `free` is what is available then.
    """
    n = checkpoint_parameters(hf_dir)
    free = available_bytes() if free is None else free
    if dtype == "auto":
        native = native_bf16() if bf16_native is None else bf16_native
        dtype = "bfloat16" if native else "float32"
        if dtype == "float32" and free is not None and estimate_bytes(n, "float32") > free \
                and estimate_bytes(n, "bfloat16") <= free:
            dtype = "bfloat16"
    if dtype not in BYTES:
        raise ModelError(f"adapt.dtype={dtype!r}: expected auto, float32 or bfloat16")
    need = estimate_bytes(n, dtype)
    if free is not None and need > free:
        hint = ("; set adapt.dtype = \"bfloat16\" (about " + _gb(estimate_bytes(n, "bfloat16")) + ")"
                if dtype == "float32" else "; close other programs or use a smaller model")
        raise ModelError(f"adapt: training against {str(hf_dir)!r} ({n / 1e9:.2f}e9 parameters, {dtype}) needs about "
                         f"{_gb(need)} of memory, {_gb(free)} is available{hint}")
    return FitPlan(dtype, n, need, free)
