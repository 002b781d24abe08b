"""The README's main command, `make run` = `imgsim demo`: from nothing, it trains the demo model
on real digits, indexes them, and serves; held-out queries find their own digit."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from service.client import SimilarityClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_demo_builds_from_nothing_serves_and_finds_held_out_digits(tmp_path):
    port, root = _free_port(), tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "imgsim.cli", "demo", "--root", str(root),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        with SimilarityClient(f"127.0.0.1:{port}", timeout=10) as c:
            deadline = time.time() + 300  # training + indexing on 2 cores: about a minute
            while time.time() < deadline and proc.poll() is None:
                try:
                    if c.health() == "SERVING":
                        break
                except grpc.RpcError:
                    time.sleep(1)
            assert c.health() == "SERVING", proc.stdout.read1().decode(errors="replace")
            queries = sorted((root / "queries").iterdir())
            assert len(queries) == 30  # 3 held-out images of each digit
            results = [c.search(q.read_bytes(), 5).hits for q in queries]
            top1 = sum(r[0].label == q.name.split("__")[0]
                       for r, q in zip(results, queries, strict=True))
            assert top1 >= 24, f"only {top1}/30 held-out digits found their own digit first"
            held_out = {"/".join((q.name.split("__")[0], Path(q.name.split("__")[1]).stem))
                        for q in queries}  # catalogue keys are label/name
            keys = {h.key for r in results for h in r}
            assert len(keys) > 30 and all("/" in k for k in keys) and not keys & held_out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
