"""Shared pytest fixtures. One section per room; add new fixtures to their room's section."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from importlib import metadata
from pathlib import Path

import pytest

# --- tiny model -------------------------------------------------------------------------------------------

TINY_SEED = 0


def _tiny_cache_key(seed: int) -> str:
    """Changes whenever the files make_tiny would write could change: recipe/exporter code, library versions."""
    import edge_agent.export as export_pkg

    h = hashlib.sha256()
    for path in sorted(Path(export_pkg.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    for dist in ("transformers", "tokenizers", "torch", "gguf", "safetensors"):
        try:
            h.update(f"{dist}={metadata.version(dist)};".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=none;".encode())
    return f"tiny-s{seed}-{h.hexdigest()[:16]}"


def _build_tiny_cached(root: Path, seed: int) -> Path:
    """Build once into ROOT/<key>/ (complete when READY exists); a file lock serialises concurrent pytest runs."""
    from edge_agent.export import make_tiny

    key = _tiny_cache_key(seed)
    final = root / key
    if (final / "READY").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "READY").is_file():  # another session built it while we waited
            return final
        shutil.rmtree(final, ignore_errors=True)
        tmp = root / f"{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        make_tiny(tmp, seed)
        (tmp / "READY").write_text(key + "\n")
        os.replace(tmp, final)
    _prune_stale(root, keep=final)
    return final


def _prune_stale(root: Path, keep: Path, min_age_s: float = 3600.0) -> None:
    """Drop tiny models built by older code (about 5 MB each); recent ones may still serve a concurrent session."""
    import time

    for d in root.glob("tiny-s*"):
        if d.is_dir() and d != keep and time.time() - d.stat().st_mtime > min_age_s:
            shutil.rmtree(d, ignore_errors=True)
            Path(f"{d}.lock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def tiny_model(request, tmp_path_factory) -> Path:
    """DIR with DIR/hf/ (transformers checkpoint), DIR/model.gguf and DIR/mmproj.gguf (f32) of the tiny Qwen3-VL.

    Built once and cached under .pytest_cache (keyed by seed, exporter code and library versions), so only the
    first session pays the ~15 s. Treat it as read-only: copy files elsewhere before changing them.
    """
    cache = getattr(request.config, "cache", None)
    if cache is None:  # -p no:cacheprovider
        return _build_tiny_cached(tmp_path_factory.mktemp("tiny"), TINY_SEED)
    return _build_tiny_cached(Path(cache.mkdir("edge_agent_tiny")), TINY_SEED)


# --- llama.cpp backend ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_backend(tiny_model):
    """A LlamaCppBackend on the tiny model, shared by the session (1 thread, n_ctx 2048, image cache 16).

    Tests that apply a steering vector must clear it again (`tiny_backend.set_steering(None)`) before returning.
    """
    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    # one thread: llama.cpp's workers spin-wait, and on a loaded 2-core machine two threads are several times slower
    backend = LlamaCppBackend(tiny_model / "model.gguf", tiny_model / "mmproj.gguf", n_threads=1, n_ctx=2048,
                              image_cache_size=16, seed=0)
    yield backend
    backend.close()


# --- command line -----------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
# The random tiny model never closes its JSON on its own: keep its attempts short in CLI tests.
FAST_WRITER_ENV = {"EDGE_AGENT_WRITER__MAX_RETRIES": "0", "EDGE_AGENT_WRITER__MAX_MEMORY_TOKENS": "16",
                   "EDGE_AGENT_WRITER__CANDIDATE_SHARE": "0", "EDGE_AGENT_MODEL__N_CTX": "2048",
                   # llama.cpp's worker threads spin-wait: on a loaded 2-core machine one thread is far faster
                   "EDGE_AGENT_MODEL__N_THREADS": "1"}


def load_tool(name: str):
    """tools/NAME.py as a module (tools are scripts, not a package; their own imports of each other resolve)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "tools"))
    return mod


def run_cli(home: Path, *args, model: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run `edge-agent ARGS` in a subprocess as a user would, with its own data folder (and model folder)."""
    import subprocess
    import sys

    full = {**os.environ, "EDGE_AGENT_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(SOCKET_GUARD), str(REPO)]),
            "EDGE_AGENT_SOCKET_LOG": str(SOCKET_LOG), **FAST_WRITER_ENV, **(env or {})}
    full.pop("EDGE_AGENT_MODEL__NAME", None)
    if model is not None:
        full["EDGE_AGENT_MODEL__NAME"] = str(model)
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], env=full, capture_output=True,
                          timeout=timeout)


# --- network guard (issue 13) ------------------------------------------------------------------------------
# Every CLI subprocess above starts with tests/socket_guard/sitecustomize.py, and this process installs the
# same guard: a non-loopback connect, sendto or name lookup is refused and logged, and the session fails.

SOCKET_GUARD = REPO / "tests" / "socket_guard"
SOCKET_LOG = Path(os.environ.get("EDGE_AGENT_SOCKET_LOG") or
                  (REPO / ".pytest_cache" / f"socket-guard-{os.getpid()}.log"))
os.environ.setdefault("EDGE_AGENT_SOCKET_LOG", str(SOCKET_LOG))


def pytest_configure(config):
    import importlib.util

    SOCKET_LOG.parent.mkdir(parents=True, exist_ok=True)
    SOCKET_LOG.unlink(missing_ok=True)
    spec = importlib.util.spec_from_file_location("_edge_agent_socket_guard", SOCKET_GUARD / "sitecustomize.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def pytest_sessionfinish(session, exitstatus):
    refused = SOCKET_LOG.read_text().splitlines() if SOCKET_LOG.exists() else []
    if refused:
        print(f"\nsocket guard: {len(refused)} non-loopback network attempts (see {SOCKET_LOG}):")
        for line in refused[:20]:
            print("  " + line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
