"""Is this checkpoint the model the deployed GGUF came from? Checked before Phase Two trains against it.

A vector trained on another checkpoint than the one the writer runs would be applied to the wrong model. The
strongest evidence is the base-model hash: sha256 over the checkpoint's *.safetensors files concatenated in
name order (as `edge_agent.export` computes it and writes it into the GGUF as `edge_agent.base_model_hash`,
or as the catalog declares it). Official GGUFs carry no such hash; then the shapes (text hidden size, layer
count) must agree, and the result says the identity was checked by shape only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edge_agent.errors import ModelError



def _weights(hf_dir: Path) -> list[Path]:
    files = sorted(hf_dir.glob("*.safetensors"), key=lambda p: p.name)
    if not files:
        raise ModelError(f"hf checkpoint {str(hf_dir)!r}: no *.safetensors weight files")
    return files


def checkpoint_hash(hf_dir: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 over the *.safetensors files in name order (seconds per GB). With `cache_dir` (the home's cache)
    the result is kept there while the files' sizes and mtimes are unchanged."""
    hf_dir = Path(hf_dir).resolve()
    files = _weights(hf_dir)
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"base-model-hash-{hashlib.sha256(str(hf_dir).encode()).hexdigest()[:16]}.json"
        try:
            data = json.loads(cache.read_text())
            if data.get("files") == stamp:
                return str(data["sha256"])
        except (OSError, ValueError, KeyError):
            pass
    h = hashlib.sha256()
    for p in files:
        with open(p, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
    digest = h.hexdigest()
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            cache.write_text(json.dumps({"files": stamp, "sha256": digest}))
        except OSError:
            pass  # hash again next time
    return digest


def _text_config(hf_dir: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"hf checkpoint {str(hf_dir)!r}: no config.json (expected a Hugging Face folder)") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"hf checkpoint {str(hf_dir)!r}: config.json unreadable ({e})") from None
    return cfg.get("text_config") or cfg


def check_checkpoint(model_path: str | Path, hf_dir: str | Path, expected_hash: str | None = None, *,
                     cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Raise ModelError when `hf_dir` is not the checkpoint `model_path` (a GGUF) was made from.

    expected_hash: the catalog's base-model hash, used when the GGUF does not carry one. Returns
    {"method": "hash" | "shape", "hash": ..., "gguf_hash": ...}.
    """
    from edge_agent.vlm.gguf_info import inspect_gguf

    hf_dir = Path(hf_dir)
    info = inspect_gguf(model_path)
    want = info.get("base_model_hash") or expected_hash or None
    text = _text_config(hf_dir)
    hidden, layers = text.get("hidden_size"), text.get("num_hidden_layers")
    if info.get("hidden_size") and hidden and int(hidden) != int(info["hidden_size"]) or \
            info.get("n_layers") and layers and int(layers) != int(info["n_layers"]):
        raise ModelError(f"hf checkpoint {str(hf_dir)!r} (hidden {hidden}, {layers} layers) is not the model of "
                         f"{str(model_path)!r} (hidden {info.get('hidden_size')}, {info.get('n_layers')} layers); "
                         "Phase Two must train against the checkpoint the GGUF was exported from")
    if not want:
        return {"method": "shape", "hash": None, "gguf_hash": None}
    got = checkpoint_hash(hf_dir, cache_dir)
    if got != want.lower():
        raise ModelError(f"hf checkpoint {str(hf_dir)!r}: base-model hash {got[:12]}... differs from the "
                         f"{'GGUF' if info.get('base_model_hash') else 'catalog'}'s {want[:12]}...; it is not the "
                         "checkpoint the deployed model was exported from")
    return {"method": "hash", "hash": got, "gguf_hash": want}
