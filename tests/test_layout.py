"""The import rules of the house (STYLE.md): imports follow the data flow, models live in
training/, no import loops among the project's modules. Read from the sources (AST), so that
lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "indexer", "service", "imgsim")

# Loops that other parts of issue 13 are breaking (item 7); remove an entry when it is gone.
# A new loop fails the test.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in (None: not the project's)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(r for a in node.names if (r := _resolve(a.name)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                r = full if full in MODULES else _resolve(base)
                if r:
                    out.add(r)
    out.discard(module)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_and_package_imports():
    # an import inside a function, and `from package import module`, both count
    assert "training.visualization.models" in GRAPH["service.jobs.kinds.visualization"]
    assert "service.jobs.kinds.clustering" in GRAPH["service.jobs.registry"]


def test_cycle_finder_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_new_import_loops():
    new = [sorted(c) for c in _cycles(GRAPH) if c not in KNOWN_CYCLES]
    assert not new, f"import loops among project modules: {new}"


def _layer(module: str) -> str:
    """The package a module belongs to; the system's database (imgsim.db: the declarative base
    and the one migration tree) is a layer of its own, below the indexer and the service."""
    return "db" if module == "imgsim.db" or module.startswith("imgsim.db.") else module.split(".")[0]


@pytest.mark.parametrize("lower, upper", [("training", "service"), ("training", "indexer"),
                                          ("training", "imgsim"), ("training", "db"),
                                          ("indexer", "service"), ("indexer", "imgsim"),
                                          ("db", "training"), ("db", "indexer"),
                                          ("db", "service"), ("db", "imgsim")])
def test_imports_follow_the_data_flow(lower, upper):
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _layer(m) == lower
                   for t in targets if _layer(t) == upper)
    assert not wrong, f"{lower} may not import {upper}: {wrong}"


def test_the_schema_has_one_owner():
    """Every table is declared on imgsim.db's Base and migrated by its one tree."""
    assert "imgsim.db.migrate" in MODULES and (ROOT / "imgsim/db/migrations/versions").is_dir()
    assert not list((ROOT / "indexer").glob("migrations/**/*.py"))  # not a second tree
    assert "imgsim.db.schema" in GRAPH["indexer.catalog"]


def _torch_module_classes(source: str, name: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                text = ast.unparse(base)
                if text.startswith(("nn.", "torch.nn.")) or text in ("Module", "Function"):
                    out.append(f"{name}:{node.lineno} {node.name}({text})")
    return out


def test_no_torch_modules_under_service():
    """Networks live in training/; service/ only loads and calls them."""
    found = [c for p in sorted((ROOT / "service").rglob("*.py"))
             for c in _torch_module_classes(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, f"model code under service/: {found}"


def test_the_module_check_sees_a_torch_module():
    src = "from torch import nn\nclass Net(nn.Module):\n    pass\nclass Plain:\n    pass\n"
    assert _torch_module_classes(src, "m.py") == ["m.py:2 Net(nn.Module)"]
