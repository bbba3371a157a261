"""Reading a GGUF file's identity without loading it: architecture, sizes, file type, base-model hash.

Uses only the `gguf` package (pure Python, memory-mapped), so the backend can refuse a wrong, truncated or
corrupt file with a one-line ModelError before llama.cpp aborts or prints pages of log on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.errors import ModelError

KEY_BASE_MODEL_HASH = "edge_agent.base_model_hash"  # written by edge_agent.export
TEXT_ARCH = "qwen3vl"
MMPROJ_ARCH, MMPROJ_PROJECTOR = "clip", "qwen3vl_merger"


def _value(fields: dict[str, Any], key: str) -> Any:
    f = fields.get(key)
    return None if f is None else f.contents()


def _file_type_name(ft: int | None) -> str | None:
    import gguf

    if ft is None:
        return None
    try:
        return gguf.LlamaFileType(ft).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"type{ft}"


def inspect_gguf(path: str | Path, *, expect: str | None = None) -> dict[str, Any]:
    """Identity of a GGUF file as a plain dict.

    Keys: path, architecture, type ("model" | "mmproj" | None), name, hidden_size (text embedding length, or
    the vision tower's width for an mmproj), n_layers (text or vision blocks), projection_dim (mmproj: the text
    hidden size it feeds), projector_type, base_model_hash (None if not exported by edge-agent), file_type
    (llama_ftype number), file_type_name ("F32", "F16", "Q8_0", "Q4_K_M", ...), n_tensors, size_bytes.

    expect: "qwen3vl" (the text model) or "mmproj" (a qwen3vl_merger projector); a file of any other kind raises.
    Raises ModelError (message names the path) for a missing, truncated, corrupt or unexpected file.
    """
    import gguf

    p = Path(path)
    if expect not in (None, TEXT_ARCH, "mmproj"):
        raise ValueError(f"expect={expect!r}: use None, {TEXT_ARCH!r} or 'mmproj'")
    if not p.is_file():
        raise ModelError(f"{p}: no such file")
    size = p.stat().st_size
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{p}: not a GGUF file (bad magic {magic!r})")
    try:
        reader = gguf.GGUFReader(p, "r")
    except Exception as e:  # the reader fails in many ways on a cut-off or damaged header; all mean "corrupt"
        raise ModelError(f"{p}: corrupt or truncated GGUF file ({size} bytes; the header or tensor index cannot be read)") from e
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > size:
        raise ModelError(f"{p}: truncated GGUF ({size} bytes, tensor data needs {end})")
    fields = reader.fields
    arch = _value(fields, "general.architecture")
    if arch == MMPROJ_ARCH:
        info = dict(type="mmproj", hidden_size=_value(fields, "clip.vision.embedding_length"),
                    n_layers=_value(fields, "clip.vision.block_count"),
                    projection_dim=_value(fields, "clip.vision.projection_dim"),
                    projector_type=_value(fields, "clip.projector_type") or _value(fields, "clip.vision.projector_type"))
    else:
        info = dict(type=_value(fields, "general.type") or ("model" if arch else None),
                    hidden_size=_value(fields, f"{arch}.embedding_length"),
                    n_layers=_value(fields, f"{arch}.block_count"), projection_dim=None, projector_type=None)
    ft = _value(fields, "general.file_type")
    info.update(path=str(p), architecture=arch, name=_value(fields, "general.name"),
                base_model_hash=_value(fields, KEY_BASE_MODEL_HASH), file_type=ft, file_type_name=_file_type_name(ft),
                n_tensors=len(reader.tensors), size_bytes=size)
    if expect == TEXT_ARCH and arch != TEXT_ARCH:
        what = f"an mmproj ({info['projector_type']})" if arch == MMPROJ_ARCH else f"architecture {arch!r}"
        raise ModelError(f"{p}: {what}, expected a Qwen3-VL text model (architecture {TEXT_ARCH!r})")
    if expect == "mmproj" and (arch != MMPROJ_ARCH or info["projector_type"] != MMPROJ_PROJECTOR):
        what = f"projector {info['projector_type']!r}" if arch == MMPROJ_ARCH else f"architecture {arch!r}"
        raise ModelError(f"{p}: {what}, expected a Qwen3-VL mmproj (projector {MMPROJ_PROJECTOR!r})")
    return info


def check_model_pair(model_path: str | Path, mmproj_path: str | Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inspect a text model and its mmproj together; ModelError if either is wrong or they do not belong together.

    The pair fits when the projector's output width equals the text hidden size; when both carry an edge-agent
    base-model hash, the hashes must be equal too.
    """
    if mmproj_path is None:
        raise ModelError(f"{model_path}: no mmproj given (Qwen3-VL needs its vision projector file, mmproj.gguf)")
    if not Path(mmproj_path).is_file():
        raise ModelError(f"{mmproj_path}: mmproj file not found (Qwen3-VL needs its vision projector next to {Path(model_path).name})")
    model = inspect_gguf(model_path, expect=TEXT_ARCH)
    mmproj = inspect_gguf(mmproj_path, expect="mmproj")
    if mmproj["projection_dim"] != model["hidden_size"]:
        raise ModelError(f"{mmproj_path}: projects to width {mmproj['projection_dim']}, but {model_path} has hidden "
                         f"size {model['hidden_size']}")
    if model["base_model_hash"] and mmproj["base_model_hash"] and model["base_model_hash"] != mmproj["base_model_hash"]:
        raise ModelError(f"{mmproj_path}: exported from a different checkpoint than {model_path} (base model hash differs)")
    return model, mmproj
