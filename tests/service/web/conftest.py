"""Real servers (gRPC and HTTP in one process) over a copy of the digits index, on loopback."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from indexer.catalog import open_catalog
from service.auth import create_api_key
from service.server import ServeConfig, Server
from service.store import ensure_service_tables
from service.web.serve import start_http


@dataclass
class Served:
    server: Server
    url: str          # http://127.0.0.1:PORT
    grpc_target: str  # 127.0.0.1:PORT
    root: Path        # the workspace: idx/, cat.db, jobs/
    keys: dict[str, str]

    def client(self, key: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)


def serve(root: Path, checkpoint: Path, *, require_api_key: bool = False, **cfg) -> Served:
    """A server with HTTP on a free port over ``root`` (a copy of the golden workspace), its
    job worker writing under ``root/jobs``."""
    url = f"sqlite:///{root / 'cat.db'}"
    sessions = open_catalog(url)
    ensure_service_tables(sessions)
    keys = {}
    if require_api_key:
        with sessions.begin() as s:
            keys = {"write": create_api_key(s, name="w", access="write", collections=["*"])[0],
                    "read": create_api_key(s, name="r", access="read", collections=["*"])[0],
                    "other": create_api_key(s, name="o", access="write",
                                            collections=["other"])[0]}
    server = Server(ServeConfig(checkpoint=str(checkpoint), index_root=str(root / "idx"),
                                catalog_url=url, port=0, require_api_key=require_api_key,
                                watch_seconds=0, **cfg))
    assert server.ready.wait(120) and server.load_error is None
    http = start_http(server, -1)
    server.stop_hooks.insert(0, http.stop)
    return Served(server, f"http://127.0.0.1:{http.port}", f"127.0.0.1:{server.port}", root,
                  keys)


@pytest.fixture(scope="module")
def web(golden, tmp_path_factory, tiny_checkpoint):
    """Keys off; limits small enough to test (64 KiB bodies, 4 items per batch)."""
    root = tmp_path_factory.mktemp("web") / "ws"
    shutil.copytree(golden, root)
    mp = pytest.MonkeyPatch()
    mp.setenv("IMGSIM_JOBS_ROOT", str(root / "jobs"))
    served = serve(root, tiny_checkpoint, max_message_bytes=64 * 1024, max_items=4, max_k=50)
    yield served
    served.server.stop(0)
    mp.undo()


@pytest.fixture(scope="module")
def secured(golden, tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("websec") / "ws"
    shutil.copytree(golden, root)
    mp = pytest.MonkeyPatch()
    mp.setenv("IMGSIM_JOBS_ROOT", str(root / "jobs"))
    served = serve(root, tiny_checkpoint, require_api_key=True)
    yield served
    served.server.stop(0)
    mp.undo()
