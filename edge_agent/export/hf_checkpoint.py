"""Reading a Hugging Face Qwen3-VL checkpoint folder without torch: config, safetensors weights, tokenizer, hash.

The exporter streams one tensor at a time from memory-mapped safetensors files, so a 2B/8B checkpoint is
converted without holding it in RAM. safetensors' own numpy loader cannot return bfloat16 (numpy has no such
dtype) and the official Qwen3-VL weights are bfloat16, so this module parses the (tiny, documented) format
itself: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then raw data.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_agent.errors import ConfigError, ModelError

# Architectures (config.json "architectures"[0]) this exporter writes; the MoE variant is named so the error is clear.
DENSE_ARCH = "Qwen3VLForConditionalGeneration"
MOE_ARCH = "Qwen3VLMoeForConditionalGeneration"


def weight_files(hf_dir: Path) -> list[Path]:
    """The checkpoint's *.safetensors files sorted by name (the order both the hash and the reader use)."""
    files = sorted(Path(hf_dir).glob("*.safetensors"), key=lambda p: p.name)
    if not files:
        if list(Path(hf_dir).glob("*.bin")):
            raise ModelError(f"{hf_dir}: only PyTorch *.bin weights found; re-save the checkpoint as safetensors")
        raise ModelError(f"{hf_dir}: no *.safetensors weight files")
    return files


def base_model_hash(hf_dir: str | Path, progress: Callable[[str, int, int], None] | None = None) -> str:
    """sha256 (hex) over the contents of the checkpoint's *.safetensors files, concatenated in name order.

    Equal to `cat $(ls HF_DIR/*.safetensors | sort) | sha256sum`. It names the base model an adapter was trained
    on; the exporter writes it into both GGUF files as `edge_agent.base_model_hash`.
    progress("hash", bytes_done, bytes_total) is called as the files are read (seconds for a multi-GB model).
    """
    files = weight_files(Path(hf_dir))
    total, done = sum(p.stat().st_size for p in files), 0
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress("hash", done, total)
    return h.hexdigest()


def load_config(hf_dir: Path) -> dict[str, Any]:
    """config.json, checked to be a dense Qwen3-VL with text and vision parts."""
    path = hf_dir / "config.json"
    if not hf_dir.is_dir():
        raise ConfigError(f"{hf_dir}: not a directory (expected a Hugging Face checkpoint folder)")
    if not path.is_file():
        raise ConfigError(f"{path}: missing (not a Hugging Face checkpoint folder)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    archs = cfg.get("architectures") or [None]
    arch, model_type = archs[0], cfg.get("model_type")
    if arch == MOE_ARCH or model_type == "qwen3_vl_moe":
        raise ModelError(f"{path}: architecture {arch or model_type!r} (Qwen3-VL MoE) is not supported yet; "
                         f"only dense {DENSE_ARCH}")
    if arch != DENSE_ARCH:
        raise ModelError(f"{path}: architecture {arch!r} is not supported; expected {DENSE_ARCH}")
    for part in ("text_config", "vision_config"):
        if not isinstance(cfg.get(part), dict):
            raise ConfigError(f"{path}: {part} missing")
    return cfg


def load_json(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ConfigError(f"{path}: missing")
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


# --- safetensors ---------------------------------------------------------------------------------------------

_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


@dataclass
class TensorRef:
    """One tensor inside a safetensors file; `load()` returns it as a float32 numpy array (HF layout)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in the file
    end: int

    def load(self) -> np.ndarray:
        count = int(np.prod(self.shape)) if self.shape else 1
        if self.dtype == "BF16":
            raw = np.fromfile(self.file, dtype="<u2", count=count, offset=self.start)
            # bfloat16 is the top half of a float32: shift into place and reinterpret.
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        elif self.dtype in _NUMPY_DTYPES:
            dt = np.dtype(_NUMPY_DTYPES[self.dtype]).newbyteorder("<")
            out = np.fromfile(self.file, dtype=dt, count=count, offset=self.start).astype(np.float32)
        else:
            raise ModelError(f"{self.file}: tensor {self.name} has dtype {self.dtype}; "
                             "quantized checkpoints are not supported (export from a BF16/F16/F32 checkpoint)")
        if out.size != count:
            raise ModelError(f"{self.file}: tensor {self.name} is truncated")
        return out.reshape(self.shape)


def read_safetensors_index(files: list[Path]) -> dict[str, TensorRef]:
    """Headers of all weight files -> {tensor name: TensorRef}. Data is read later, one tensor at a time."""
    refs: dict[str, TensorRef] = {}
    for path in files:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ModelError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ModelError(f"{path}: not a safetensors file (bad header length)")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ModelError(f"{path}: not a safetensors file (header is not JSON)") from None
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if base + end > size:
                raise ModelError(f"{path}: truncated (tensor {name} ends past the end of the file)")
            if name in refs:
                raise ModelError(f"{path}: tensor {name} also appears in {refs[name].file.name}")
            refs[name] = TensorRef(name, info["dtype"], tuple(info["shape"]), path, base + start, base + end)
    return refs


# --- tokenizer -------------------------------------------------------------------------------------------------

# Qwen2's pre-tokenizer regex (also Qwen3 / Qwen3-VL). llama.cpp implements it natively as pre-tokenizer "qwen2".
QWEN2_PRETOKENIZER_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class Vocab:
    tokens: list[str]  # byte-level BPE strings, index = token id; unused ids are "[PAD<id>]"
    types: list[int]  # gguf.TokenType per id
    special_ids: dict[str, int]  # content -> id of added tokens


def _regexes(node: Any) -> list[str]:
    """All Split-regex patterns in a tokenizers pre_tokenizer description (nested Sequences included)."""
    if not isinstance(node, dict):
        return []
    found = []
    if node.get("type") == "Split" and isinstance(node.get("pattern"), dict) and "Regex" in node["pattern"]:
        found.append(node["pattern"]["Regex"])
    for child in node.get("pretokenizers") or []:
        found += _regexes(child)
    return found


def load_vocab(hf_dir: Path, vocab_size: int, looks_special: Callable[[str], bool]) -> Vocab:
    """Token list and types from tokenizer.json, padded to the model's vocab_size (embedding rows).

    Token types follow llama.cpp's converter: added tokens that are special (or look like `<|...|>`) are CONTROL,
    other added tokens USER_DEFINED, the rest NORMAL, ids without a token UNUSED.
    """
    import gguf

    path = hf_dir / "tokenizer.json"
    tok = load_json(path, required=True)
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ModelError(f"{path}: tokenizer model {model.get('type')!r} is not supported; expected byte-level BPE")
    regexes = _regexes(tok.get("pre_tokenizer"))
    if regexes and regexes != [QWEN2_PRETOKENIZER_REGEX]:
        raise ModelError(f"{path}: pre-tokenizer regex differs from Qwen2's; llama.cpp would split text differently")
    id_to_tok: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in tok.get("added_tokens") or []}
    for i, a in added.items():
        id_to_tok[i] = a["content"]
    if id_to_tok and max(id_to_tok) >= vocab_size:
        raise ModelError(f"{path}: token id {max(id_to_tok)} does not fit the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in id_to_tok:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        text = id_to_tok[i]
        tokens.append(text)
        if i in added:
            special = bool(added[i].get("special")) or looks_special(text)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return Vocab(tokens, types, {a["content"]: i for i, a in added.items()})


def load_chat_template(hf_dir: Path) -> str | None:
    """The chat template: tokenizer_config.json, else chat_template.jinja, else chat_template.json."""
    tc = load_json(hf_dir / "tokenizer_config.json", required=False)
    if isinstance(tc.get("chat_template"), str):
        return tc["chat_template"]
    jinja = hf_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    js = load_json(hf_dir / "chat_template.json", required=False)
    if isinstance(js.get("chat_template"), str):
        return js["chat_template"]
    return None
