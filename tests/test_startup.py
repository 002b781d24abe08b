"""Start-up (issue 13, item 8): `imgsim --help` and the client commands import no torch or faiss,
so that they start in well under a second. A top-level heavy import in a CLI module, or a
registrar that imports one, fails here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "faiss", "sklearn", "matplotlib", "scipy")
CLIENT_COMMANDS = [[], ["search"], ["verify"], ["describe"], ["upsert"], ["delete"], ["reload"],
                   ["health"], ["keys", "list"], ["jobs", "list"], ["jobs", "get"],
                   ["config", "show"]]

# Runs in a fresh interpreter: builds the parser, runs each argv (help or a real call), then
# reports which heavy modules got imported.
_PROBE = """
import json, sys
from imgsim.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def _heavy_after(*argvs: list[str]) -> list[str]:
    code = _PROBE.format(heavy=repr(HEAVY))
    r = subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cmd", CLIENT_COMMANDS, ids=lambda c: " ".join(c) or "imgsim")
def test_help_imports_no_heavy_module(cmd):
    assert _heavy_after([*cmd, "--help"]) == []


def test_a_client_call_and_config_show_import_no_heavy_module(tmp_path):
    # a server that is not there: the call fails (UNAVAILABLE), without having loaded torch
    assert _heavy_after(["describe", "--server", "127.0.0.1:1", "--timeout", "1"],
                        ["config", "show"]) == []


def test_the_commands_beside_a_server_import_no_heavy_module(tmp_path):
    """keys list and jobs list/get read the database: SQLAlchemy and Alembic, never faiss."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    r = subprocess.run([sys.executable, "-m", "imgsim.cli", "index", "migrate", "--catalog", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _heavy_after(["keys", "list", "--catalog", url], ["jobs", "list", "--catalog", url],
                        ["jobs", "get", "1", "--catalog", url]) == []


def test_the_probe_sees_a_heavy_import():
    code = "import json, sys, faiss; print(json.dumps(['faiss' in sys.modules]))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout) == [True]


def test_every_command_still_parses_its_flags():
    """Deferred flags (imgsim.cli.CommandParser) are there once a command is used."""
    from imgsim.cli import build_parser

    args = build_parser().parse_args(["train", "--loss", "triplet", "--data", "d", "--out", "o"])
    assert args.loss == "triplet" and args.func.__name__ == "_train"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--loss", "no-such-loss"])
    args = build_parser().parse_args(["segment", "eval", "--checkpoint", "c.pt"])
    assert args.data.endswith("isbi2012")
