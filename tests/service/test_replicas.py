"""Stateless replicas: two `imgsim serve` processes over one catalogue and one Milvus store; an
Upsert or Delete through replica A is what a Search through replica B answers.

Milvus Lite opens its file in one process: replica A (this test's process) opens it and Milvus
Lite serves it on a loopback port, which replica B (a real `imgsim serve` subprocess) is given as
``milvus:http://127.0.0.1:PORT``, the way it would name a Milvus server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer.build import BuildConfig, build_index
from service.client import SimilarityClient, UpsertImage
from service.server import Server
from tests.indexer.conftest import _free_port, _new_pg_database, postgres_server  # noqa: F401
from tests.service.test_vector_store_serving import fresh_image, publish_into_milvus, store_config

pytestmark = pytest.mark.slow
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue(request, tmp_path, digits_dir, tiny_checkpoint) -> tuple[Path, str]:
    """(workspace, catalogue URL): the digits indexed, their vectors published into Milvus."""
    url = (f"sqlite:///{tmp_path / 'cat.db'}" if request.param == "sqlite"
           else _new_pg_database(request.getfixturevalue("postgres_server")))
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                            index_root=str(tmp_path / "idx"), catalog_url=url, num_workers=0,
                            progress=False))
    publish_into_milvus(tmp_path, str(tmp_path / "milvus.db"), catalog=url)
    return tmp_path, url


def _wait_serving(client: SimilarityClient, proc: subprocess.Popen, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"replica B exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if client.health() == "SERVING":
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError("replica B did not reach SERVING")


def test_a_write_through_one_replica_is_read_through_the_other(catalogue, tiny_checkpoint,
                                                                digits_dir):
    ws, url = catalogue
    cfg = store_config(ws, tiny_checkpoint, f"milvus:{ws / 'milvus.db'}", port=0,
                       catalog_url=url, watch_seconds=0, job_threads=0)
    a = Server(cfg)
    assert a.ready.wait(120) and a.load_error is None, a.load_error
    lite = a.core.store.client._get_connection()._address  # Milvus Lite's loopback server
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSIM_")}
    env.update(OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    b = subprocess.Popen(
        [sys.executable, "-m", "imgsim.cli", "serve", "--checkpoint", str(tiny_checkpoint),
         "--catalog", url, "--index-root", str(ws / "idx"), "--port", str(port),
         "--http-port", "0", "--watch-seconds", "0", "--vector-store", f"milvus:http://{lite}"],
        cwd=ws, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    to_a, to_b = SimilarityClient(f"127.0.0.1:{a.port}"), SimilarityClient(f"127.0.0.1:{port}")
    try:
        _wait_serving(to_b, b)
        assert to_b.describe().index_version == to_a.describe().index_version
        data = fresh_image(digits_dir, "2", 9)
        assert to_b.search(data, 1).hits[0].key != "r/new"
        r = to_a.upsert([UpsertImage("r/new", data, label="2", metadata={"via": "a"})])
        assert r.inserted == 1
        hit = to_b.search(data, 1, metadata={"via": "a"}).hits[0]  # B's first read after it
        assert (hit.key, hit.label, dict(hit.metadata)) == ("r/new", "2", {"via": "a"})
        assert hit.distance == pytest.approx(0, abs=1e-3)
        assert to_a.search(data, 1).hits[0].key == "r/new"  # the writer reads its own write
        to_b.delete(["r/new"])  # and the other way round
        assert to_a.search(data, 1).hits[0].key != "r/new"
        assert to_b.search(data, 1).hits[0].key != "r/new"
    finally:
        to_a.close()
        to_b.close()
        b.terminate()
        b.wait(timeout=60)
        a.stop(0)
