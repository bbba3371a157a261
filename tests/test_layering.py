"""The layering of docs/architecture.md, enforced: who may import whom, no cycles, `ask` without cv2/torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "edge_agent"
BOTTOM = {"config", "errors", "types", "models"}  # import nothing of ours but each other
# room -> rooms it may import (besides itself and the bottom)
ALLOWED = {
    "capture": set(),
    "store": set(),
    "vlm": set(),
    "memory": {"vlm", "store"},
    "qa": {"vlm", "store"},
    "adapt": {"vlm", "store", "memory"},
    "device": {"store", "vlm", "capture"},
}
RUNTIME = {"capture", "store", "vlm", "memory", "qa", "adapt", "runtime", "device"}  # never train/export
NEVER_IN_ADAPT = {"cv2", "llama_cpp", "edge_agent.capture", "edge_agent.vlm.llama_cpp", "edge_agent.vlm.factory"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module imported anywhere in the file (top level and inside functions), absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from edge_agent import cli`
    return found


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "edge_agent" and len(parts) > 1 else None


MODULES = {module_name(p): imports_of(p) for p in sorted(PKG.rglob("*.py"))}


def ours(imports: set[str]) -> set[str]:
    return {m for m in imports if m.startswith("edge_agent.") and room(m) is not None and
            (m in MODULES or m.rpartition(".")[0] in MODULES)}


def test_the_parser_sees_imports_inside_functions():
    assert "edge_agent.vlm.llama_cpp" in MODULES["edge_agent.vlm.factory"]
    assert len(MODULES) > 40


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m) in set(ALLOWED) | BOTTOM))
def test_rooms_import_only_what_the_table_allows(module):
    r = room(module)
    allowed = {r} | BOTTOM | ALLOWED.get(r, set())
    bad = sorted(m for m in ours(MODULES[module]) if room(m) not in allowed)
    assert not bad, f"{module} ({r}) imports {bad}; docs/architecture.md allows {sorted(allowed)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m) == "adapt"))
def test_adapt_never_touches_capture_cv2_or_llama_cpp(module):
    bad = sorted(m for m in MODULES[module] if any(m == n or m.startswith(n + ".") for n in NEVER_IN_ADAPT))
    assert not bad, f"{module} imports {bad}"


def test_train_and_export_are_never_imported_by_the_runtime():
    bad = sorted((m, i) for m, imps in MODULES.items() if room(m) in RUNTIME
                 for i in ours(imps) if room(i) in {"train", "export"})
    assert not bad


def test_nothing_imports_the_cli():
    bad = sorted(m for m, imps in MODULES.items() if m != "edge_agent.cli" and "edge_agent.cli" in imps)
    assert not bad


def test_no_import_cycles_between_rooms():
    graph: dict[str, set[str]] = defaultdict(set)
    for m, imps in MODULES.items():
        for i in ours(imps):
            if room(i) != room(m):
                graph[room(m)].add(room(i))
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_ask_loads_without_cv2_torch_or_transformers():
    code = (
        "import sys\n"
        "import edge_agent.cli, edge_agent.qa.answer, edge_agent.qa.embed, edge_agent.store, edge_agent.models\n"
        "import edge_agent.vlm.factory, edge_agent.vlm.llama_cpp, edge_agent.config\n"
        "heavy = sorted(m for m in ('cv2', 'torch', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"`ask` pulls in {res.stdout.strip()}"


def test_no_import_cycles_between_modules():
    """Also inside a room (eval.benchmark_run <-> eval.shard was one). Edges into a package's __init__ are left
    out: `from edge_agent.store import migrations` names the package but loads the submodule."""
    packages = {m for m in MODULES if (PKG.parent / m.replace(".", "/") / "__init__.py").is_file()}
    graph = {m: {i for i in ours(imps) if i in MODULES and i not in packages and i != m}
             for m, imps in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path[path.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
