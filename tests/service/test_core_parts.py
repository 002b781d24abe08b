"""The core's parts import each other one way: none of them imports the facade (service.core)."""

import ast
from pathlib import Path

import pytest

from tests.service.conftest import make_core

SERVICE = Path(__file__).resolve().parents[2] / "service"
PARTS = ["domain", "collection_registry", "live_index", "embedding_front", "image_files",
         "searcher", "verifier", "mutations"]


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("part", PARTS)
def test_a_part_never_imports_the_facade(part):
    assert "service.core" not in imported_modules(SERVICE / f"{part}.py")


def test_the_facade_shares_one_registry_front_and_cache_between_its_parts(workspace,
                                                                          tiny_checkpoint):
    core = make_core(workspace, tiny_checkpoint)
    assert core.searcher._collections is core.verifier._collections is core.registry
    assert core.searcher._front is core.verifier._front is core.front
    assert core.changes._entries is core.searcher._entries is core.entries
    core.close()
