"""The README's main command, `make run` = `imgsim demo`: from nothing, it trains the demo model
on real digits, indexes them, and serves; held-out queries find their own digit. The README's
example commands name files the demo really writes; an unwritable root is a clear error."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

import service.demo
import service.writable
from imgsim.cli import main
from service.client import SimilarityClient

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_demo_paths() -> list[str]:
    """Every ``var/demo/...`` path in the README's example commands (code blocks)."""
    blocks = re.findall(r"^```\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    return [m for b in blocks for line in b.splitlines() if "imgsim" in line or "locust" in line
            for m in re.findall(r"var/demo/\S+", line)]


class _Stop(Exception):
    pass


def _no_training(*args, **kwargs):
    raise _Stop("stop before training")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_demo_builds_from_nothing_serves_and_finds_held_out_digits(tmp_path):
    port, http_port, root = _free_port(), _free_port(), tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "imgsim.cli", "demo", "--root", str(root),
                             "--host", "127.0.0.1", "--port", str(port),
                             "--http-port", str(http_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        with SimilarityClient(f"127.0.0.1:{port}", timeout=10) as c:
            deadline = time.time() + 300  # about 15 s on 2 cores; the bound is for a busy box
            while time.time() < deadline and proc.poll() is None:
                try:
                    if c.health() == "SERVING":
                        break
                except grpc.RpcError:
                    time.sleep(1)
            assert c.health() == "SERVING", proc.stdout.read1().decode(errors="replace")
            queries = sorted((root / "queries").iterdir())
            assert len(queries) == 30  # 3 held-out images of each digit
            for path in readme_demo_paths():  # the README's examples run as written
                assert (root / path.removeprefix("var/demo/")).exists(), path
            results = [c.search(q.read_bytes(), 5).hits for q in queries]
            top1 = sum(r[0].label == q.name.split("__")[0]
                       for r, q in zip(results, queries, strict=True))
            assert top1 >= 24, f"only {top1}/30 held-out digits found their own digit first"
            held_out = set(json.loads((root / "demo.json").read_text())["query_sources"])
            assert len(held_out) == 30 and all(k.startswith(f"{k[0]}/") for k in held_out)
            keys = {h.key for r in results for h in r}  # catalogue keys are label/name
            assert len(keys) > 30 and all("/" in k for k in keys) and not keys & held_out
            # the web console and HTTP API the demo prints, beside gRPC in the same process
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=10) as r:
                assert b"imgsim console" in r.read()
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/index",
                                        timeout=10) as r:
                assert json.load(r)["count"] == c.describe().count
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_readme_examples_name_query_files_the_demo_writes(tmp_path, monkeypatch):
    """The README's `imgsim search/verify var/demo/queries/...` lines are copy-paste runnable:
    the demo names its held-out queries <digit>__<n>.png whichever images it drew."""
    monkeypatch.setattr(service.demo, "train", _no_training)
    root = tmp_path / "var" / "demo"
    with pytest.raises(_Stop):
        service.demo.prepare_demo(root)
    written = sorted(p.name for p in (root / "queries").iterdir())
    assert written == sorted(f"{d}__{n}.png" for d in range(10) for n in (1, 2, 3))
    paths = readme_demo_paths()
    queries = [p for p in paths if p.startswith("var/demo/queries/")]
    assert len(queries) >= 3 and any("verify" in line for line in README.read_text().splitlines()
                                     if queries[0] in line)
    missing = [p for p in paths if not (root / p.removeprefix("var/demo/")).exists()]
    assert not missing, f"the README names files the demo does not write: {missing}"


def test_unwritable_root_is_one_clear_line_naming_the_folder_and_the_fix(tmp_path, monkeypatch,
                                                                         capsys):
    """A bind-mounted var/ owned by root, run as the image's uid 10001. As root nothing stops a
    write, so the preflight's os.access is made to say no; without it the demo would train."""
    var = tmp_path / "var"
    var.mkdir()
    real_access = os.access
    monkeypatch.setattr(service.writable.os, "access",
                        lambda p, mode: False if Path(p) == var else real_access(p, mode))
    monkeypatch.setattr(service.demo, "train", _no_training)
    monkeypatch.setattr(service.demo, "export_digits", _no_training)
    rc = main(["demo", "--root", str(var / "demo"), "--prepare-only"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{var} is not writable" in err and "chown -R 10001 var" in err and "--user" in err
    assert not (var / "demo").exists()


def test_permission_denied_midway_names_the_folder_and_the_fix(tmp_path, monkeypatch, capsys):
    """A sub-folder someone else owns (an old root-made var/demo/digits): the OS's bare
    'Permission denied' becomes the same clear message, naming the folder that refused."""
    def denied(dest):
        raise PermissionError(13, "Permission denied", str(dest / "0"))

    monkeypatch.setattr(service.demo, "export_digits", denied)
    root = tmp_path / "demo"
    rc = main(["demo", "--root", str(root), "--prepare-only"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{root / 'digits'} is not writable" in err and "chown -R 10001 var" in err


def test_an_old_demo_layout_is_rebuilt_not_served(tmp_path, monkeypatch):
    """A var/demo from before the stable query names (no format) would not have the files the
    README names: it is rebuilt."""
    root = tmp_path / "demo"
    root.mkdir()
    (root / "demo.json").write_text(json.dumps({
        "data": "sklearn-digits", "checkpoint": "x.pt", "index_root": "i", "catalog_url": "c",
        "queries": [str(root / "queries" / "3__0123.png")]}))
    monkeypatch.setattr(service.demo, "train", _no_training)
    with pytest.raises(_Stop):
        service.demo.prepare_demo(root)
    assert (root / "queries" / "3__1.png").is_file()
