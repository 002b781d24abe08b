"""Running the HTTP app in the gRPC server's process: uvicorn on a thread of its own."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import uvicorn

from service.web.app import create_app
from service.web.context import WebContext

if TYPE_CHECKING:
    from service.hosting import HostServer

log = logging.getLogger(__name__)


class HttpServer:
    """uvicorn serving ``app`` on ``host:port`` (0: any free port; ``port`` is the bound one).
    The socket is bound here, so that a busy port fails the caller at once, as gRPC's does."""

    def __init__(self, app, host: str, port: int, *, tls_cert: str = "", tls_key: str = "",
                 grace_seconds: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named, not 0: asyncio turns Nagle off only on sockets that say they are
        # TCP, and with Nagle on a keep-alive response waits out the client's delayed ACK
        # (40 ms a request, measured); accepted sockets inherit TCP_NODELAY on Linux too
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise OSError(f"cannot bind HTTP {host}:{port} (is another server running "
                          f"there?): {e.strerror}") from e
        self.sock.listen(2048)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.tls = bool(tls_cert)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                ssl_certfile=tls_cert or None, ssl_keyfile=tls_key or None,
                                timeout_graceful_shutdown=int(max(grace_seconds, 1)),
                                backlog=2048, server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True, name="http")
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise OSError(f"the HTTP server on {host}:{port} did not start")

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(2)
        self.sock.close()


def web_context(server: HostServer) -> WebContext:
    """The HTTP side of a :class:`service.server.Server`: its core, keys, jobs and limits."""
    from service.jobs.worker import default_artifacts_root

    cfg = server.cfg
    runtime = getattr(server, "jobs", None)
    worker = getattr(runtime, "worker", None)
    root = worker.cfg.artifacts_root if worker is not None else default_artifacts_root()
    return WebContext(lambda: server.core, authenticator=server.authenticator,
                      jobs=runtime.core if runtime is not None else None, artifacts_root=root,
                      max_body_bytes=cfg.max_message_bytes, max_upsert_bytes=cfg.max_upsert_bytes,
                      metrics=server.metrics, max_threads=cfg.max_workers)


def start_http(server: HostServer, port: int | None = None) -> HttpServer | None:
    """Start the HTTP API and console of ``server`` on ``port`` (default ``cfg.http_port``;
    0: none, -1: any free port)."""
    cfg = server.cfg
    port = getattr(cfg, "http_port", 0) if port is None else port
    if not port:
        return None
    if port < 0:  # any free port (tests)
        port = 0
    http = HttpServer(create_app(web_context(server), grpc_port=server.port), cfg.host, port,
                      tls_cert=cfg.tls_cert, tls_key=cfg.tls_key, grace_seconds=cfg.grace_seconds)
    log.info("HTTP API and console on %s", http.url, extra={"http_port": http.port})
    return http
