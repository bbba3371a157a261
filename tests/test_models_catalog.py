"""Model catalog: entries, resolve, list, pull from a local fake hub folder with checksums and resume."""

import hashlib
from pathlib import Path

import pytest

from edge_agent import models as M
from edge_agent.errors import ModelError


def test_shipped_catalog_entries():
    cat = M.load_catalog()
    assert {"qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b", "default", "tiny"} <= set(cat)
    e = cat["qwen3-vl-2b"]
    assert e.kind == "hub" and e.repo == "Qwen/Qwen3-VL-2B-Instruct-GGUF" and e.hf_repo == "Qwen/Qwen3-VL-2B-Instruct"
    assert (e.hidden_size, e.n_layers) == (2048, 28)
    assert e.model.file.endswith("Q4_K_M.gguf") and e.mmproj.file.startswith("mmproj-")
    import re

    hashes = []
    for name in ("qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b"):
        e = cat[name]
        for f in (e.model, e.mmproj):
            # a sha256 is 64 lower-case hex digits (what _verify compares against); sizes in bytes, > 100 MB
            assert f.size > 10**8 and re.fullmatch(r"[0-9a-f]{64}", f.sha256), (name, f)
            hashes.append(f.sha256)
        # the description's total agrees with the listed sizes (to the GB figure it states)
        stated = float(re.search(r"~([0-9.]+) GB", e.description).group(1))
        assert abs((e.model.size + e.mmproj.size) / 1e9 - stated) < 0.06, (name, stated)
    assert len(set(hashes)) == len(hashes)  # no value copied from one file to another
    # These values are not checked against a download here (no hub is reachable): a mismatch is kept aside and can be
    # accepted (tests/test_claims_models.py), never silently deleted.


def _fake_catalog(tmp_path, *, model_sha=None, mmproj_sha=None):
    """A catalog with one hub entry whose files live in a local folder laid out like the hub."""
    hub = tmp_path / "hub" / "Org" / "Tiny-GGUF"
    hub.mkdir(parents=True)
    model_bytes, mmproj_bytes = b"GGUF" + bytes(range(256)) * 50, b"GGUF-proj" * 300
    (hub / "tiny-Q4.gguf").write_bytes(model_bytes)
    (hub / "mmproj-tiny.gguf").write_bytes(mmproj_bytes)
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    mmproj_hash = mmproj_sha if mmproj_sha is not None else sha(mmproj_bytes)
    toml = tmp_path / "catalog.toml"
    toml.write_text(f'''
[models.tiny-hub]
kind = "hub"
repo = "Org/Tiny-GGUF"
revision = "abc"
hidden_size = 64
n_layers = 24
base_model_hash = "declared"
model = {{ file = "tiny-Q4.gguf", size = {len(model_bytes)}, sha256 = "{model_sha or sha(model_bytes)}" }}
mmproj = {{ file = "mmproj-tiny.gguf", size = {len(mmproj_bytes)}, sha256 = "{mmproj_hash}" }}

[models.local-one]
kind = "local"
paths = ["{{home}}/models/local-one"]
build = "edge-agent models make-tiny --out {{home}}/models/local-one"
''')
    return M.load_catalog(toml), tmp_path / "hub", model_bytes


def test_pull_resolve_list_from_local_hub(tmp_path):
    cat, hub, model_bytes = _fake_catalog(tmp_path)
    home = tmp_path / "home"
    rows = {r["name"]: r for r in M.list_models(home, cat)}
    assert rows["tiny-hub"]["status"] == "missing" and rows["local-one"]["status"] == "missing"
    assert rows["tiny-hub"]["installed"] is False and rows["tiny-hub"]["size_bytes"] > 0
    with pytest.raises(ModelError, match="run: edge-agent models pull tiny-hub"):
        M.resolve("tiny-hub", home, cat)
    r = M.pull("tiny-hub", home, repo_root=hub, catalog=cat)
    assert r.model_path == home / "models" / "tiny-hub" / "tiny-Q4.gguf" and r.model_path.read_bytes() == model_bytes
    assert r.mmproj_path.is_file() and r.expected_hash == "declared" and r.name == "tiny-hub"
    assert M.resolve("tiny-hub", home, cat) == r
    row = {x["name"]: x for x in M.list_models(home, cat)}["tiny-hub"]
    assert row["status"] == "installed" and row["installed"] is True
    # a second pull keeps the verified files
    mtime = r.model_path.stat().st_mtime_ns
    M.pull("tiny-hub", home, repo_root=hub, catalog=cat)
    assert r.model_path.stat().st_mtime_ns == mtime


def test_pull_checksum_mismatch_keeps_the_file_aside_and_raises(tmp_path):
    cat, hub, _ = _fake_catalog(tmp_path, model_sha="0" * 64)
    home = tmp_path / "home"
    with pytest.raises(ModelError, match="sha256 .* does not match the catalog's 0000.*kept aside"):
        M.pull("tiny-hub", home, repo_root=hub, catalog=cat)
    d = home / "models" / "tiny-hub"
    assert not (d / "tiny-Q4.gguf").exists() and not (d / "tiny-Q4.gguf.part").exists()
    assert (d / "tiny-Q4.gguf.mismatch").is_file()  # tests/test_claims_models.py: accepting it


def test_pull_without_published_hash_checks_size(tmp_path):
    cat, hub, _ = _fake_catalog(tmp_path, mmproj_sha="")
    r = M.pull("tiny-hub", tmp_path / "home", repo_root=hub, catalog=cat)
    assert r.mmproj_path.is_file()
    (hub / "Org" / "Tiny-GGUF" / "mmproj-tiny.gguf").write_bytes(b"short")
    r.mmproj_path.unlink()
    with pytest.raises(ModelError, match="size 5 bytes, catalog says"):
        M.pull("tiny-hub", tmp_path / "home", repo_root=hub, catalog=cat)


def test_pull_resumes_partial_download(tmp_path):
    cat, hub, model_bytes = _fake_catalog(tmp_path)
    d = tmp_path / "home" / "models" / "tiny-hub"
    d.mkdir(parents=True)
    part = d / "tiny-Q4.gguf.part"
    # a corrupted first half proves the copy continues after it (and the checksum then catches it)
    part.write_bytes(b"X" * (len(model_bytes) // 2))
    with pytest.raises(ModelError, match="does not match"):
        M.pull("tiny-hub", tmp_path / "home", repo_root=hub, catalog=cat)
    part.write_bytes(model_bytes[: len(model_bytes) // 2])
    seen = []
    r = M.pull("tiny-hub", tmp_path / "home", repo_root=hub, catalog=cat,
               progress=lambda name, done, total: seen.append((name, done, total)))
    assert r.model_path.read_bytes() == model_bytes and not part.exists()
    assert seen[0][0] == "tiny-Q4.gguf" and seen[0][1] == len(model_bytes)  # one block: only the second half


def test_pull_uses_huggingface_hub_without_repo_root(tmp_path, monkeypatch):
    cat, hub, model_bytes = _fake_catalog(tmp_path)
    calls = []

    def fake_download(repo_id, filename, revision, local_dir):
        calls.append((repo_id, filename, revision))
        target = Path(local_dir) / filename
        target.write_bytes((hub / repo_id / filename).read_bytes())
        return str(target)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    r = M.pull("tiny-hub", tmp_path / "home", catalog=cat)
    assert r.model_path.read_bytes() == model_bytes
    assert calls == [("Org/Tiny-GGUF", "tiny-Q4.gguf", "abc"), ("Org/Tiny-GGUF", "mmproj-tiny.gguf", "abc")]

    def offline(**kw):
        raise huggingface_hub.errors.OfflineModeIsEnabled("offline")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    r.model_path.unlink()
    with pytest.raises(ModelError, match="cannot download tiny-Q4.gguf from Org/Tiny-GGUF@abc"):
        M.pull("tiny-hub", tmp_path / "home", catalog=cat)


def test_local_entries_and_folders(tmp_path):
    cat, _, _ = _fake_catalog(tmp_path)
    home = tmp_path / "home"
    with pytest.raises(ModelError, match=r"run: edge-agent models make-tiny --out .*local-one"):
        M.resolve("local-one", home, cat)
    with pytest.raises(ModelError, match="built locally"):
        M.pull("local-one", home, catalog=cat)
    d = home / "models" / "local-one"
    (d / "hf").mkdir(parents=True)
    (d / "model.gguf").write_bytes(b"x")
    with pytest.raises(ModelError, match="mmproj.gguf' is missing"):
        M.resolve("local-one", home, cat)
    (d / "mmproj.gguf").write_bytes(b"y")
    r = M.resolve("local-one", home, cat)
    assert (r.model_path, r.mmproj_path, r.hf_dir) == (d / "model.gguf", d / "mmproj.gguf", d / "hf")
    assert r.expected_hash is None
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "model.gguf").write_bytes(b"x")
    (other / "mmproj.gguf").write_bytes(b"y")
    r2 = M.resolve(str(other), home, cat)
    assert r2.model_path == other / "model.gguf" and r2.hf_dir is None and r2.name == "elsewhere"
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        M.resolve("nope", home, cat)


def test_default_resolves_or_names_the_command(tmp_path):
    home = tmp_path / "home"
    if (M.REPO_ROOT / "models" / "default" / "model.gguf").is_file():
        assert M.resolve("default", home).name == "default"
    else:
        with pytest.raises(ModelError, match=r"run: edge-agent models make-tiny --out .*models/default"):
            M.resolve("default", home)


def test_bad_catalog(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[models.x]\nkind = "hub"\n')
    with pytest.raises(ModelError, match="entry 'x'"):
        M.load_catalog(p)
    p.write_text('[models.x]\nkind = "hub"\nbogus = 1\n')
    with pytest.raises(ModelError, match="bogus"):
        M.load_catalog(p)
