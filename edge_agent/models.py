"""Model catalog (models/catalog.toml): resolve a name or folder to GGUF paths, pull official models with checksums.

Installed hub models live in `<home>/models/<name>/` under their original file names; local entries ("default",
"tiny") and plain folders hold `model.gguf` + `mmproj.gguf` (+ `hf/`, the transformers checkpoint). Nothing is
ever built or downloaded implicitly: `resolve` raises ModelError naming the command that would provide the files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edge_agent.errors import ModelError

REPO_ROOT = Path(__file__).resolve().parents[1]
CATALOG_PATH = REPO_ROOT / "models" / "catalog.toml"
MODEL_FILE, MMPROJ_FILE, HF_DIR = "model.gguf", "mmproj.gguf", "hf"
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


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are. `expected_hash` is the catalog's base-model hash (None when not declared)."""

    model_path: Path
    mmproj_path: Path
    hf_dir: Path | None
    name: str
    expected_hash: str | None = None
    hf_repo: str | None = None


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
    hf = path / HF_DIR
    return ResolvedModel(path / MODEL_FILE, path / MMPROJ_FILE, hf if hf.is_dir() else None, name, expected_hash)


def resolve(name_or_dir: str | Path, home: str | Path, catalog: dict[str, CatalogEntry] | None = None) -> ResolvedModel:
    """A catalog name or a folder with model.gguf + mmproj.gguf -> paths. Raises ModelError if files are missing."""
    home = Path(home).expanduser()
    catalog = load_catalog() if catalog is None else catalog
    key = str(name_or_dir)
    entry = catalog.get(key)
    if entry is not None and entry.kind == "hub":
        d = home / "models" / entry.name
        r = ResolvedModel(d / entry.model.file, d / entry.mmproj.file, None, entry.name,
                          entry.base_model_hash or None, entry.hf_repo)
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


def _verify(path: Path, spec: CatalogFile) -> str:
    """Size and sha256 of a downloaded file against the catalog; a mismatch deletes the file and raises."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        path.unlink()
        raise ModelError(f"{spec.file}: size {size} bytes, catalog says {spec.size}; deleted, pull again")
    digest = sha256_file(path)
    if spec.sha256 and digest != spec.sha256.lower():
        path.unlink()
        raise ModelError(f"{spec.file}: sha256 {digest} does not match the catalog's {spec.sha256}; deleted")
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


def pull(name: str, home: str | Path, repo_root: str | Path | None = None, *,
         catalog: dict[str, CatalogEntry] | None = None,
         progress: Callable[[str, int, int], None] | None = None) -> ResolvedModel:
    """Download a hub entry into `<home>/models/<name>/`, verifying size and sha256 of each file.

    `repo_root`: a local folder laid out like the hub (`<repo_root>/<owner>/<repo>/<file>`) to copy from instead of
    the network (tests, air-gapped installs from a USB stick). Files already present and verified are kept.
    """
    home = Path(home).expanduser()
    catalog = load_catalog() if catalog is None else catalog
    entry = catalog.get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(sorted(catalog))})")
    if entry.kind != "hub":
        raise ModelError(f"model {name!r} is not downloaded but built locally; run: "
                         f"{entry.build.format(home=home, repo=REPO_ROOT)}")
    dest = home / "models" / entry.name
    dest.mkdir(parents=True, exist_ok=True)
    for spec in (entry.model, entry.mmproj):
        target = dest / spec.file
        if target.is_file():
            try:
                _verify(target, spec)
                continue
            except ModelError:
                pass  # a bad leftover was deleted by _verify: fetch it again
        if repo_root is not None:
            _copy_resumable(Path(repo_root) / entry.repo / spec.file, target, progress)
        else:
            got = _hub_download(entry.repo, spec.file, entry.revision, dest)
            if got.resolve() != target.resolve():
                shutil.move(str(got), target)
        _verify(target, spec)
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
