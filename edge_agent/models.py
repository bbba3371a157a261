"""Model catalog (models/catalog.toml): resolve a name or folder to GGUF paths, pull official models with checksums.

Installed hub models live in `<home>/models/<name>/` under their original file names; local entries ("default",
"tiny") and plain folders hold `model.gguf` + `mmproj.gguf` (+ `hf/`, the transformers checkpoint; + `reader.gguf`,
a text-only model that answers in its place, and `judge.gguf`, one that judges Phase Two's pairs, where they
ship). Nothing is ever built or downloaded implicitly: `resolve` raises ModelError naming the command that would
provide the files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6's): the same parser, from PyPI
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edge_agent.errors import ModelError

def _data_root() -> Path:
    """The folder holding `models/` (catalog.toml and the embedded default): the repository in a checkout or an
    editable install; `<prefix>/share/edge-agent` in a regular install (pyproject's data-files put it there)."""
    here = Path(__file__).resolve()
    candidates = [here.parents[1]]
    for up in (4, 3):  # <prefix>/lib/pythonX.Y/site-packages/edge_agent/models.py; Windows <prefix>/Lib/site-packages
        if len(here.parents) > up:
            candidates.append(here.parents[up] / "share" / "edge-agent")
    import sys
    import sysconfig

    candidates += [Path(sysconfig.get_paths().get("data", sys.prefix)) / "share" / "edge-agent",
                   Path(sys.prefix) / "share" / "edge-agent"]
    for c in candidates:
        if (c / "models" / "catalog.toml").is_file():
            return c
    return candidates[0]


REPO_ROOT = _data_root()  # `{repo}` in the catalog's local paths
CATALOG_PATH = REPO_ROOT / "models" / "catalog.toml"
ACCEPTED_FILE = "accepted_sha256.json"  # in <home>/models/<name>/: hashes the user accepted with --accept-sha
MODEL_FILE, MMPROJ_FILE, HF_DIR = "model.gguf", "mmproj.gguf", "hf"
# A small model trained to both write and read trades one skill for the other, so the embedded default ships a
# second, text-only copy trained to read (models/default/HISTORY.md, "The reader"): the answerer, when present.
READER_FILE = "reader.gguf"
# ... and a third, trained to judge Phase Two's pairs: judging and reading trade against each other too
# (models/default/HISTORY.md, "The judge ships apart"). `adapt` judges with it, else with the reader, else with the
# writer.
JUDGE_FILE = "judge.gguf"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class CatalogFile:
    file: str
    size: int | None = None  # bytes, None when unknown
    sha256: str = ""  # "" when not published


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str  # "hub" (download from `repo`) or "local" (a folder in `paths`)
    description: str = ""
    repo: str = ""
    revision: str | None = None
    hf_repo: str | None = None
    hidden_size: int | None = None
    n_layers: int | None = None
    base_model_hash: str = ""
    model: CatalogFile | None = None
    mmproj: CatalogFile | None = None
    paths: tuple[str, ...] = ()
    build: str = ""
    # capture/writer settings that suit this model (config.PROFILE_KEYS) and its needs (ram_gb, disk_gb)
    profile: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are. `expected_hash` is the catalog's base-model hash (None when not declared)."""

    model_path: Path
    mmproj_path: Path
    hf_dir: Path | None
    name: str
    expected_hash: str | None = None
    hf_repo: str | None = None
    reader_path: Path | None = None  # a text-only answerer shipped beside the model (READER_FILE), None when none
    judge_path: Path | None = None  # a text-only judge of Phase Two's pairs (JUDGE_FILE), None when none


def load_catalog(path: str | Path | None = None) -> dict[str, CatalogEntry]:
    path = Path(path) if path else CATALOG_PATH
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model catalog {str(path)!r}: not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ModelError(f"model catalog {str(path)!r}: {e}") from None
    out = {}
    for name, raw in data.get("models", {}).items():
        raw = dict(raw)
        try:
            for key in ("model", "mmproj"):
                if key in raw:
                    raw[key] = CatalogFile(**raw[key])
            raw["paths"] = tuple(raw.get("paths", ()))
            entry = CatalogEntry(name=name, **raw)
        except TypeError as e:
            raise ModelError(f"model catalog {str(path)!r}: entry {name!r}: {e}") from None
        if entry.kind not in ("hub", "local") or (entry.kind == "hub" and not (entry.model and entry.mmproj)):
            raise ModelError(f"model catalog {str(path)!r}: entry {name!r}: kind={entry.kind!r} needs "
                             "model and mmproj files (hub) or paths (local)")
        out[name] = entry
    return out


def _expand(template: str, home: Path) -> Path:
    return Path(template.format(home=home, repo=REPO_ROOT)).expanduser()


def _folder(path: Path, name: str, expected_hash: str | None = None) -> ResolvedModel:
    hf, reader, judge = path / HF_DIR, path / READER_FILE, path / JUDGE_FILE
    return ResolvedModel(path / MODEL_FILE, path / MMPROJ_FILE, hf if hf.is_dir() else None, name, expected_hash,
                         reader_path=reader if reader.is_file() else None,
                         judge_path=judge if judge.is_file() else None)


def resolve(name_or_dir: str | Path, home: str | Path, catalog: dict[str, CatalogEntry] | None = None) -> ResolvedModel:
    """A catalog name or a folder with model.gguf + mmproj.gguf -> paths. Raises ModelError if files are missing."""
    home = Path(home).expanduser()
    catalog = load_catalog() if catalog is None else catalog
    key = str(name_or_dir)
    entry = catalog.get(key)
    if entry is not None and entry.kind == "hub":
        d = home / "models" / entry.name
        hf = d / HF_DIR  # `models pull NAME --with-checkpoint`, or the README's huggingface-cli download
        r = ResolvedModel(d / entry.model.file, d / entry.mmproj.file, hf if (hf / "config.json").is_file() else None,
                          entry.name, entry.base_model_hash or None, entry.hf_repo)
        missing = [p.name for p in (r.model_path, r.mmproj_path) if not p.is_file()]
        if missing:
            raise ModelError(f"model {entry.name!r} is not installed ({', '.join(missing)} missing in {str(d)!r}); "
                             f"run: edge-agent models pull {entry.name}")
        return r
    if entry is not None:  # local folder entry
        candidates = [_expand(p, home) for p in entry.paths]
        for d in candidates:
            if (d / MODEL_FILE).is_file():
                return _check_folder(_folder(d, entry.name, entry.base_model_hash or None))
        raise ModelError(f"model {entry.name!r} not found (looked in {', '.join(map(str, candidates))}); "
                         f"run: {entry.build.format(home=home, repo=REPO_ROOT)}")
    d = Path(key).expanduser()
    if d.is_dir():
        return _check_folder(_folder(d.resolve(), d.name))
    raise ModelError(f"unknown model {key!r}: not in the catalog ({', '.join(sorted(catalog))}) and not a folder "
                     f"with {MODEL_FILE} + {MMPROJ_FILE}")


MANIFEST_FILE = "manifest.json"


def _manifest_profile(folder: Path) -> dict[str, Any] | None:
    """The `profile` object of a local model folder's manifest.json, None when it has none."""
    import json

    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"model manifest {str(path)!r}: {e}") from None
    profile = data.get("profile") if isinstance(data, dict) else None
    if profile is not None and not isinstance(profile, dict):
        raise ModelError(f"model manifest {str(path)!r}: profile must be an object, got {profile!r}")
    return profile


def model_profile(name_or_dir: str | Path, home: str | Path,
                  catalog: dict[str, CatalogEntry] | None = None) -> tuple[dict[str, Any], str] | None:
    """(profile, where it came from) of a model name or folder, None when it declares none. Never needs the files
    of a hub model (a profile applies before `pull`); a local folder's manifest.json wins over its catalog entry."""
    home = Path(home).expanduser()
    catalog = load_catalog() if catalog is None else catalog
    key = str(name_or_dir)
    entry = catalog.get(key)
    folders: list[Path] = []
    if entry is not None and entry.kind == "local":
        folders = [d for d in (_expand(t, home) for t in entry.paths) if (d / MODEL_FILE).is_file()][:1]
    elif entry is None and Path(key).expanduser().is_dir():
        folders = [Path(key).expanduser()]
    for d in folders:
        found = _manifest_profile(d)
        if found is not None:
            return dict(found), f"profile {d / MANIFEST_FILE}"
    if entry is not None and entry.profile:
        return dict(entry.profile), f"profile {entry.name} (models/catalog.toml)"
    return None


def _check_folder(r: ResolvedModel) -> ResolvedModel:
    for p in (r.model_path, r.mmproj_path):
        if not p.is_file():
            raise ModelError(f"model {r.name!r}: {str(p)!r} is missing")
    return r


# ---------------------------------------------------------------- pull

def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _accepted(dest: Path) -> dict[str, str]:
    import json

    try:
        data = json.loads((dest / ACCEPTED_FILE).read_text(encoding="utf-8"))
        return {str(k): str(v).lower() for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _accept(dest: Path, file: str, digest: str) -> None:
    import json

    data = _accepted(dest)
    data[file] = digest
    (dest / ACCEPTED_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _aside(path: Path, why: str) -> Path:
    """Move a file that failed verification out of the way (never delete a download the user may want)."""
    aside = path.with_name(path.name + f".{why}")
    os.replace(path, aside)
    return aside


def _verify(path: Path, spec: CatalogFile, *, name: str = "", accept: tuple[str, ...] = ()) -> str:
    """Size and sha256 of a downloaded file against the catalog. A mismatch moves the file aside
    (`<file>.mismatch`, kept for the user to inspect or accept) and raises ModelError saying so; a sha256 the
    user accepted (`accept`, or recorded in accepted_sha256.json by an earlier `--accept-sha`) passes."""
    size = path.stat().st_size
    accepted = set(a.lower() for a in accept)
    known = _accepted(path.parent).get(spec.file)
    if known:
        accepted.add(known)
    digest = sha256_file(path)
    if digest in accepted:
        if digest != (spec.sha256 or "").lower():
            _accept(path.parent, spec.file, digest)
        return digest
    cmd = f"edge-agent models pull {name or '<name>'} --accept-sha {digest}"
    if spec.size is not None and size != spec.size:
        aside = _aside(path, "mismatch")
        raise ModelError(f"{spec.file}: size {size} bytes, catalog says {spec.size}; kept aside as {str(aside)!r} "
                         f"(pull again to fetch it anew, or accept this file: {cmd})")
    if spec.sha256 and digest != spec.sha256.lower():
        aside = _aside(path, "mismatch")
        raise ModelError(f"{spec.file}: sha256 {digest} does not match the catalog's {spec.sha256}; kept aside as "
                         f"{str(aside)!r}. If you trust it (the catalog may be out of date), accept it: {cmd}")
    return digest


def _copy_resumable(src: Path, dst: Path, progress: Callable[[str, int, int], None] | None = None) -> int:
    """Copy `src` to `dst` through `dst.part`, continuing an earlier partial copy. Returns bytes copied now."""
    if not src.is_file():
        raise ModelError(f"{src.name}: not found in the local repository folder {str(src.parent)!r}")
    part = dst.with_name(dst.name + ".part")
    total = src.stat().st_size
    done = part.stat().st_size if part.is_file() else 0
    if done > total:  # a partial file longer than the source cannot be a prefix of it
        part.unlink()
        done = 0
    copied = 0
    with open(src, "rb") as fin, open(part, "ab") as fout:
        fin.seek(done)
        while block := fin.read(_CHUNK):
            fout.write(block)
            copied += len(block)
            if progress:
                progress(dst.name, done + copied, total)
    os.replace(part, dst)
    return copied


def _hub_download(repo: str, file: str, revision: str | None, dest: Path) -> Path:
    """huggingface_hub download into `dest` (it resumes interrupted downloads from its .incomplete files)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo, filename=file, revision=revision, local_dir=dest))
    except (OSError, EntryNotFoundError, ValueError) as e:  # hub HTTP errors and offline mode are OSErrors
        raise ModelError(f"cannot download {file} from {repo}@{revision or 'main'}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def _owner_only_tree(path: Path) -> None:
    """0700 folders, 0600 files (a model folder lies in the wearer's home; umask does not decide)."""
    for p in [path, *path.rglob("*")]:
        try:
            if p.is_symlink():
                continue
            os.chmod(p, 0o700 if p.is_dir() else 0o600)
        except OSError:
            pass


def _pull_checkpoint(entry: CatalogEntry, dest: Path, repo_root: str | Path | None) -> Path:
    """The full-precision checkpoint (`entry.hf_repo`) into `dest/hf`, for Phase Two."""
    if not entry.hf_repo:
        raise ModelError(f"model {entry.name!r}: the catalog names no full-precision checkpoint (hf_repo)")
    hf = dest / HF_DIR
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]
    if repo_root is not None:
        src = Path(repo_root) / entry.hf_repo
        if not src.is_dir():
            raise ModelError(f"{entry.hf_repo}: not found in the local repository folder {str(repo_root)!r}")
        hf.mkdir(parents=True, exist_ok=True, mode=0o700)
        for f in sorted(src.iterdir()):
            if f.is_file() and any(f.match(p) for p in patterns):
                _copy_resumable(f, hf / f.name)
    else:
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(repo_id=entry.hf_repo, local_dir=hf, allow_patterns=patterns)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot download {entry.hf_repo}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if not (hf / "config.json").is_file() or not list(hf.glob("*.safetensors")):
        raise ModelError(f"{entry.hf_repo}: downloaded into {str(hf)!r} but config.json or *.safetensors is missing")
    return hf


def pull(name: str, home: str | Path, repo_root: str | Path | None = None, *,
         catalog: dict[str, CatalogEntry] | None = None,
         progress: Callable[[str, int, int], None] | None = None,
         with_checkpoint: bool = False, accept_sha: tuple[str, ...] | list[str] = ()) -> ResolvedModel:
    """Download a hub entry into `<home>/models/<name>/`, verifying size and sha256 of each file.

    `repo_root`: a local folder laid out like the hub (`<repo_root>/<owner>/<repo>/<file>`) to copy from instead of
    the network (tests, air-gapped installs from a USB stick). Files already present and verified are kept.
    A file that fails verification is kept aside as `<file>.mismatch` and the error says how to accept it:
    `accept_sha` lists sha256 values the user accepts (a kept-aside file with that hash is taken back without
    downloading again); accepted hashes are remembered in `accepted_sha256.json`.
    `with_checkpoint`: also fetch the full-precision checkpoint (`hf_repo`) into `<home>/models/<name>/hf/`,
    the folder Phase Two trains against.
    """
    home = Path(home).expanduser()
    catalog = load_catalog() if catalog is None else catalog
    entry = catalog.get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(sorted(catalog))})")
    if entry.kind != "hub":
        raise ModelError(f"model {name!r} is not downloaded but built locally; run: "
                         f"{entry.build.format(home=home, repo=REPO_ROOT)}")
    accept = tuple(a.strip().lower() for a in accept_sha)
    dest = home / "models" / entry.name
    old_umask = os.umask(0o077)
    try:
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        for spec in (entry.model, entry.mmproj):
            target = dest / spec.file
            aside = target.with_name(target.name + ".mismatch")
            if not target.is_file() and aside.is_file() and accept and sha256_file(aside) in accept:
                os.replace(aside, target)  # the user accepted the file kept aside: no second download
            if target.is_file():
                _verify(target, spec, name=entry.name, accept=accept)  # a bad file is moved aside and raises
                continue
            if repo_root is not None:
                _copy_resumable(Path(repo_root) / entry.repo / spec.file, target, progress)
            else:
                got = _hub_download(entry.repo, spec.file, entry.revision, dest)
                if got.resolve() != target.resolve():
                    shutil.move(str(got), target)
            _verify(target, spec, name=entry.name, accept=accept)
        if with_checkpoint:
            _pull_checkpoint(entry, dest, repo_root)
    finally:
        os.umask(old_umask)
        _owner_only_tree(dest)
    return resolve(name, home, catalog)


# ---------------------------------------------------------------- list

def list_models(home: str | Path, catalog: dict[str, CatalogEntry] | None = None) -> list[dict[str, Any]]:
    """One row per catalog entry (and per extra folder under <home>/models).

    Row keys: name, kind (hub | local | folder), description, repo, hidden_size, n_layers, size_bytes, path,
    status (installed | partial | missing) and installed (bool).
    """
    home = Path(home).expanduser()
    catalog = load_catalog() if catalog is None else catalog
    rows = []
    for entry in catalog.values():
        row: dict[str, Any] = {"name": entry.name, "kind": entry.kind, "description": entry.description,
                               "repo": entry.repo or None, "hidden_size": entry.hidden_size,
                               "n_layers": entry.n_layers, "size_bytes": None}
        if entry.kind == "hub":
            row["size_bytes"] = sum(f.size or 0 for f in (entry.model, entry.mmproj)) or None
            d = home / "models" / entry.name
            present = [(d / f.file).is_file() for f in (entry.model, entry.mmproj)]
            row["status"] = "installed" if all(present) else ("partial" if any(present) else "missing")
            row["path"] = str(d)
        else:
            found = next((p for p in (_expand(t, home) for t in entry.paths) if (p / MODEL_FILE).is_file()), None)
            row["status"] = "installed" if found else "missing"
            row["path"] = str(found or _expand(entry.paths[0], home))
        rows.append(row)
    for row in rows:
        row["installed"] = row["status"] == "installed"
    models_dir = home / "models"
    if models_dir.is_dir():
        for d in sorted(models_dir.iterdir()):
            if d.name not in catalog and (d / MODEL_FILE).is_file():
                rows.append({"name": str(d), "kind": "folder", "description": "", "repo": None, "hidden_size": None,
                             "n_layers": None, "size_bytes": None,
                             "status": "installed" if (d / MMPROJ_FILE).is_file() else "partial", "path": str(d),
                             "installed": (d / MMPROJ_FILE).is_file()})
    return rows
