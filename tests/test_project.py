"""Project-level checks: layout, import direction, CLI help, Dockerfile, generated protos."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from imgsim.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {"training": set(), "indexer": {"training"}, "service": {"training", "indexer"}}


def test_layout():
    for name in ["pyproject.toml", "training", "indexer", "service", "protos", "tests",
                 "loadtests", "Dockerfile", "README.md", ".ci/run", "Makefile"]:
        assert (REPO / name).exists(), name


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_arrows(package):
    forbidden = set(ALLOWED) - ALLOWED[package] - {package}
    for f in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{f.relative_to(REPO)} imports {n}"


def _subcommands(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommands(sub, prefix + (name,))


@pytest.mark.parametrize("cmd", list(_subcommands(build_parser())), ids=" ".join)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: imgsim" in out and len(out.splitlines()) > 3


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "imgsim.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "serve" in r.stdout


def test_dockerfile_essentials():
    text = (REPO / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0].startswith("FROM python:3.11")
    assert "download.pytorch.org/whl/cpu" in text  # CPU-only torch
    assert any(ln.startswith("USER ") and "root" not in ln for ln in lines)
    assert any(ln.startswith("HEALTHCHECK") for ln in lines)
    assert any(ln.startswith("EXPOSE") and "50051" in ln for ln in lines)
    assert "grpc_tools.protoc" in text
    assert any(ln.startswith(("CMD", "ENTRYPOINT")) and "imgsim" in ln for ln in lines)


def test_generated_protos_match_the_proto(tmp_path):
    from grpc_tools import protoc

    src = "protos/imgsim/v1/similarity.proto"
    assert protoc.main(["protoc", f"-I{REPO / 'protos'}", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", str(REPO / src)]) == 0
    for name in ["similarity_pb2.py", "similarity_pb2_grpc.py"]:
        fresh = (tmp_path / "imgsim/v1" / name).read_text()
        assert (REPO / "imgsim/v1" / name).read_text() == fresh, f"{name} is stale: run make proto"


def test_every_proto_is_compiled_by_make_and_the_dockerfile():
    """A .proto that `make proto` or the image's build step leaves out is a module missing at
    import (the image's server would not start)."""
    protos = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "protos").rglob("*.proto"))
    assert "protos/imgsim/v1/catalog.proto" in protos
    for name in ("Makefile", "Dockerfile"):
        text = (REPO / name).read_text()
        missing = [p for p in protos if p not in text]
        assert not missing, f"{name} does not compile {missing}"
