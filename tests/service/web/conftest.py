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
                                catalog_url=url, port=0, http_port=-1,
                                require_api_key=require_api_key, watch_seconds=0, **cfg))
    assert server.ready.wait(120) and server.load_error is None
    return Served(server, f"http://127.0.0.1:{server.http.port}", f"127.0.0.1:{server.port}",
                  root, keys)


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


# -- the browser ------------------------------------------------------------------------------
CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str | None:
    """Debian's chromium (never a browser Playwright downloads)."""
    import os

    return next((p for p in CHROMIUM if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="session")
def browser():
    """Headless chromium driven by Playwright; skipped with the reason where either is absent,
    except under IMGSIM_REQUIRE_BROWSER=1 (CI installs both), where that fails the test."""
    import os

    exe = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = ("playwright is not installed (pip install -e '.[dev]')" if sync_playwright is None
               else None if exe else "no chromium (apt-get install chromium)")
    if missing:
        if os.environ.get("IMGSIM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"IMGSIM_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser, tmp_path):
    """A fresh tab (its own sessionStorage); scripts' errors fail the test. The console's
    content security policy is bypassed: the tests evaluate their own expressions, and hostile
    labels must stay text through the console's own code, not thanks to the policy."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    yield pg
    context.close()
    assert not errors, f"errors in the page's scripts: {errors}"


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """A full-page PNG under the test's tmp dir (and, with IMGSIM_CONSOLE_SHOTS=DIR, a copy
    there, to look at)."""
    import os

    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("IMGSIM_CONSOLE_SHOTS"):
        dest = Path(os.environ["IMGSIM_CONSOLE_SHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / path.name)
    return path
