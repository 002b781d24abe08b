"""Integration: train a tiny model, build an index, start the real gRPC server, call it."""

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from indexer.build import BuildConfig, build_index
from service.client import SimilarityClient
from service.server import ServeConfig, Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory, digits_dir, tiny_checkpoint):
    tmp = tmp_path_factory.mktemp("srv")
    url = f"sqlite:///{tmp / 'cat.db'}"
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                            index_root=str(tmp / "idx"), catalog_url=url, num_workers=0,
                            progress=False))
    cfg = ServeConfig(checkpoint=str(tiny_checkpoint), index_root=str(tmp / "idx"),
                      catalog_url=url, host="127.0.0.1", port=0)
    server = Server(cfg)
    assert server.ready.wait(60) and server.load_error is None
    client = SimilarityClient(f"127.0.0.1:{server.port}")
    yield server, client, cfg
    client.close()
    server.stop(0)


def test_health_serving(served):
    _, client, _ = served
    assert client.health() == "SERVING"
    assert client.health("imgsim.v1.SimilarityService") == "SERVING"


def test_verify_image_with_itself(served, digits_dir):
    _, client, _ = served
    img = sorted((digits_dir / "2").iterdir())[3]
    r = client.verify(img, img)
    assert r.same and r.distance < 1e-3 and r.model_version.startswith("tiny@")


def test_search_k_hits_sorted_own_image_first(served, digits_dir):
    _, client, _ = served
    img = sorted((digits_dir / "9").iterdir())[11]
    r = client.search(img, 5)
    assert len(r.hits) == 5
    assert r.hits[0].key == f"9/{img.stem}"
    assert [h.distance for h in r.hits] == sorted(h.distance for h in r.hits)
    assert r.index_version.startswith("v")


def test_garbage_is_invalid_argument(served):
    _, client, _ = served
    with pytest.raises(grpc.RpcError) as e:
        client.search(b"\x00garbage\xff" * 10, 3)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "decode" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.verify(b"junk", b"junk")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.search("no/such-key", 3)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert client.health() == "SERVING"  # still alive


def test_reflection_lists_the_service(served):
    _, client, _ = served
    db = ProtoReflectionDescriptorDatabase(client.channel)
    services = db.get_services()
    assert "imgsim.v1.SimilarityService" in services and "grpc.health.v1.Health" in services
    desc = db.FindFileContainingSymbol("imgsim.v1.SimilarityService")
    assert desc.package == "imgsim.v1"


def test_not_serving_until_loaded(tmp_path, tiny_checkpoint):
    """With a missing index the server still answers health (NOT_SERVING) and UNAVAILABLE."""
    cfg = ServeConfig(checkpoint=str(tiny_checkpoint), index_root=str(tmp_path / "none"),
                      catalog_url=f"sqlite:///{tmp_path / 'c.db'}", port=0)
    server = Server(cfg)
    try:
        server.ready.wait(30)
        with SimilarityClient(f"127.0.0.1:{server.port}") as c:
            assert c.health() == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as e:
                c.search(b"x", 1)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_stops_gracefully_on_sigterm(served):
    _, _, cfg = served
    port, http_port = _free_port(), _free_port()  # HTTP on too (the default is 8080)
    proc = subprocess.Popen([sys.executable, "-m", "imgsim.cli", "serve", "--checkpoint",
                             cfg.checkpoint, "--index-root", cfg.index_root, "--catalog",
                             cfg.catalog_url, "--port", str(port), "--http-port", str(http_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        with SimilarityClient(f"127.0.0.1:{port}", timeout=5) as c:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if c.health() == "SERVING":
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.3)
            assert c.health() == "SERVING"
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_locustfile_runs_headless_against_the_server(served, digits_dir, tmp_path):
    """The load test itself: a few seconds of Search, Verify and Embed, none failing."""
    import csv

    server, _, _ = served
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "locust"), "-f",
                        os.path.join(repo, "loadtests", "locustfile.py"), "--headless", "-u", "3",
                        "-r", "3", "-t", "4s", "--host", f"127.0.0.1:{server.port}",
                        "--images", str(digits_dir / "5"), "--csv", str(tmp_path / "l"),
                        "--only-summary", "--exit-code-on-error", "0"],
                       capture_output=True, text=True, timeout=120, cwd=repo,
                       env={**os.environ, "PYTHONPATH": repo})
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "l_stats.csv") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert {"Search", "Verify", "Embed"} <= set(rows)
    assert int(rows["Aggregated"]["Request Count"]) > 10
    assert int(rows["Aggregated"]["Failure Count"]) == 0


def test_second_server_on_a_busy_port_fails_clearly(served):
    """gRPC's default SO_REUSEPORT would let two servers share a port silently."""
    server, _, cfg = served
    from dataclasses import replace

    with pytest.raises(OSError, match="cannot bind"):
        Server(replace(cfg, port=server.port))
