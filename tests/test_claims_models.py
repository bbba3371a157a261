"""Issue 10.1 / 10.8 / 10.5 on models: a pulled model finds its checkpoint (`pull --with-checkpoint` fetches it,
its identity is checked against the GGUF), a checksum mismatch keeps the file aside and can be accepted, model
folders are owner-only whatever the umask, and a regular (non-editable) install finds the catalog and default."""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import models as M
from edge_agent.errors import ModelError
from test_models_catalog import _fake_catalog

REPO = Path(__file__).resolve().parents[1]


def _hub_with_checkpoint(tmp_path, tiny_model, *, gguf_from_tiny=True):
    """A fake hub: the tiny model's GGUFs as a hub entry, its hf/ folder as the entry's hf_repo."""
    hub = tmp_path / "hub"
    g = hub / "Org" / "Tiny-GGUF"
    g.mkdir(parents=True)
    shutil.copy(tiny_model / "model.gguf", g / "tiny.gguf")
    shutil.copy(tiny_model / "mmproj.gguf", g / "mmproj-tiny.gguf")
    shutil.copytree(tiny_model / "hf", hub / "Org" / "Tiny")
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    toml = tmp_path / "catalog.toml"
    toml.write_text(f'''
[models.tiny-hub]
kind = "hub"
repo = "Org/Tiny-GGUF"
hf_repo = "Org/Tiny"
model = {{ file = "tiny.gguf", size = {(g / "tiny.gguf").stat().st_size}, sha256 = "{sha(g / "tiny.gguf")}" }}
mmproj = {{ file = "mmproj-tiny.gguf", size = {(g / "mmproj-tiny.gguf").stat().st_size}, sha256 = "{sha(g / "mmproj-tiny.gguf")}" }}
''')
    return M.load_catalog(toml), hub


def test_pull_with_checkpoint_and_the_documented_hf_folder_is_found(tmp_path, tiny_model):
    cat, hub = _hub_with_checkpoint(tmp_path, tiny_model)
    home = tmp_path / "home"
    r = M.pull("tiny-hub", home, repo_root=hub, catalog=cat)
    assert r.hf_dir is None  # no checkpoint yet
    r = M.pull("tiny-hub", home, repo_root=hub, catalog=cat, with_checkpoint=True)
    assert r.hf_dir == home / "models" / "tiny-hub" / "hf" and (r.hf_dir / "config.json").is_file()
    assert list(r.hf_dir.glob("*.safetensors"))
    # the README's manual route (huggingface-cli download ... --local-dir <home>/models/<name>/hf) is the same folder
    assert M.resolve("tiny-hub", home, cat).hf_dir == r.hf_dir


def test_checkpoint_identity_is_checked_against_the_gguf(tmp_path, tiny_model):
    from edge_agent.adapt.identity import check_checkpoint, checkpoint_hash

    ok = check_checkpoint(tiny_model / "model.gguf", tiny_model / "hf", cache_dir=tmp_path / "cache")
    assert ok["method"] == "hash" and ok["hash"] == ok["gguf_hash"]  # the exporter wrote the hash into the GGUF
    assert checkpoint_hash(tiny_model / "hf", tmp_path / "cache") == ok["hash"]  # cached the second time
    other = tmp_path / "other-hf"
    shutil.copytree(tiny_model / "hf", other)
    st = next(other.glob("*.safetensors"))
    data = bytearray(st.read_bytes())
    data[-1] ^= 1  # one weight bit: another checkpoint
    st.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="differs from the GGUF's"):
        check_checkpoint(tiny_model / "model.gguf", other)
    # a checkpoint of another shape is refused even without any hash to compare
    cfg = json.loads((other / "config.json").read_text())
    (cfg.get("text_config") or cfg)["num_hidden_layers"] = 3
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="is not the model of"):
        check_checkpoint(tiny_model / "model.gguf", other)


def test_cli_adapt_refuses_a_checkpoint_of_another_model(tmp_path, tiny_model):
    from conftest import run_cli

    folder = tmp_path / "m"
    folder.mkdir()
    for f in ("model.gguf", "mmproj.gguf"):
        os.symlink(tiny_model / f, folder / f)
    shutil.copytree(tiny_model / "hf", folder / "hf")
    st = next((folder / "hf").glob("*.safetensors"))
    data = bytearray(st.read_bytes())
    data[-1] ^= 1
    st.write_bytes(bytes(data))
    r = run_cli(tmp_path / "home", "adapt", model=folder, timeout=900)  # torch import on a loaded machine
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "differs from the GGUF's" in err and "Traceback" not in err


# --- 10.8: a checksum mismatch keeps the file and can be accepted ---------------------------------------------

def test_mismatch_keeps_the_download_aside_and_accept_sha_takes_it_back(tmp_path):
    cat, hub, model_bytes = _fake_catalog(tmp_path, model_sha="0" * 64)
    home = tmp_path / "home"
    real = hashlib.sha256(model_bytes).hexdigest()
    with pytest.raises(ModelError) as e:
        M.pull("tiny-hub", home, repo_root=hub, catalog=cat)
    msg = str(e.value)
    d = home / "models" / "tiny-hub"
    aside = d / "tiny-Q4.gguf.mismatch"
    assert aside.read_bytes() == model_bytes  # kept, not deleted
    assert "kept aside" in msg and f"--accept-sha {real}" in msg
    # accepting it takes the kept file back: no second download (the hub copy is gone)
    (hub / "Org" / "Tiny-GGUF" / "tiny-Q4.gguf").unlink()
    r = M.pull("tiny-hub", home, repo_root=hub, catalog=cat, accept_sha=[real])
    assert r.model_path.read_bytes() == model_bytes and not aside.exists()
    assert json.loads((d / "accepted_sha256.json").read_text()) == {"tiny-Q4.gguf": real}
    M.pull("tiny-hub", home, repo_root=hub, catalog=cat)  # remembered: a later pull verifies against it


def test_cli_pull_says_how_to_accept(tmp_path):
    from conftest import run_cli

    r = run_cli(tmp_path / "home", "models", "pull", "--help")
    assert r.returncode == 0 and b"--accept-sha" in r.stdout and b"--with-checkpoint" in r.stdout


# --- 10.5: owner-only model folders --------------------------------------------------------------------------

def test_pulled_files_are_owner_only_whatever_the_umask(tmp_path):
    cat, hub, _ = _fake_catalog(tmp_path)
    old = os.umask(0o022)
    try:
        r = M.pull("tiny-hub", tmp_path / "home", repo_root=hub, catalog=cat)
    finally:
        os.umask(old)
    for p in (r.model_path.parent, r.model_path, r.mmproj_path):
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p


# --- 10.8: a regular install ---------------------------------------------------------------------------------

def test_regular_install_finds_the_catalog_and_the_default_model(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "edge_agent", src / "edge_agent", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "models", src / "models", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip uninstalls the venv's own (editable) edge-agent while installing here
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--ignore-installed", "-q", "--prefix", str(prefix),
                    str(wheel)],
                   check=True, capture_output=True, timeout=300)
    (site,) = prefix.glob("lib/python*/site-packages")
    code = ("from edge_agent import models as M; import json; c = M.load_catalog(); "
            "r = M.resolve('default', '/nonexistent-home', c); "
            "print(json.dumps([M.CATALOG_PATH.as_posix(), sorted(c), str(r.model_path), str(r.hf_dir)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr.decode()
    catalog_path, names, model_path, hf_dir = json.loads(out.stdout)
    assert catalog_path.startswith(str(prefix)) and "qwen3-vl-2b" in names
    assert model_path.startswith(str(prefix)) and Path(model_path).is_file() and Path(hf_dir).is_dir()
