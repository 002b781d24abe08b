"""The ASGI app: the HTTP/JSON API (OpenAPI at /openapi.json, docs at /docs), the web console
at /, body-size limits (413) and per-route metrics."""

from __future__ import annotations

import inspect
import json
import logging
import time
from importlib.resources import files

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from service.web import catalogue, jobs, similarity
from service.web import schemas as s
from service.web.context import WebContext
from service.web.errors import error_body, install_handlers
from service.web.search_route import SearchEndpoint

log = logging.getLogger(__name__)

STATIC = files("service.web") / "static"
# the console's own scripts and styles only; images from this origin and the blob: URLs it
# makes from fetched thumbnails and artifacts
CONSOLE_CSP = ("default-src 'self'; img-src 'self' data: blob:; frame-src 'self' blob:; "
               "script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'")

DRAIN_BYTES = 64 * 1024 * 1024
CONSOLE_HEADERS = {"Content-Security-Policy": CONSOLE_CSP, "X-Content-Type-Options": "nosniff",
                   "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}


# FastAPI's own OpenTelemetry spans, metrics and logs (newer versions make them by default):
# the server has its Prometheus metrics and logs; these cost CPU on every request
_NO_TELEMETRY = ({"telemetry": {"tracing": False, "metrics": False, "logs": False,
                                "operation_spans": False}}
                 if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


class ApiMiddleware:
    """Pure ASGI (no per-request task): refuses bodies over the limit with 413 before the app
    parses them, records each request under its route in the server's metrics, and hands the
    hot routes (``lean``: (method, path) -> ASGI app) to their plain handlers, past FastAPI."""

    def __init__(self, app, ctx: WebContext, *, lean: dict[tuple[str, str], object] | None = None
                 ) -> None:
        self.app, self.ctx = app, ctx
        self.lean = lean or {}
        self._threads_set = False

    def _limit(self, path: str) -> int:
        return self.ctx.max_upsert_bytes if path.startswith("/v1/upsert") \
            else self.ctx.max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        app = self.lean.get((scope["method"], scope["path"]), self.app)
        if not self._threads_set:  # routes block on batches in threads: as many as gRPC's
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.ctx.max_threads
            self._threads_set = True
        t0 = time.perf_counter()
        limit = self._limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        status = [0]
        # a client still sending its body when the answer comes reads a reset connection, not
        # the 413: read (and drop) a body up to this size first; a larger one is cut off
        drain_cap = max(4 * limit, DRAIN_BYTES)

        async def drain(already: int) -> bool:
            n = already
            while n <= drain_cap:
                msg = await receive()
                if msg["type"] != "http.request":
                    return False
                n += len(msg.get("body", b""))
                if not msg.get("more_body", False):
                    return True
            return False

        async def send_413(drained: bool) -> None:
            body = json.dumps(error_body(413, "RESOURCE_EXHAUSTED",
                                         f"request body over the limit of {limit} bytes")).encode()
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode())]
            if not drained:
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": 413, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            status[0] = 413

        if length is not None and length.isdigit() and int(length) > limit:
            await send_413(int(length) <= drain_cap and await drain(0))
            return self._observe(scope, 413, t0)
        seen, over = [0], [False]

        async def counting_receive():
            msg = await receive()
            if msg["type"] == "http.request" and not over[0]:
                seen[0] += len(msg.get("body", b""))
                if seen[0] > limit:  # a chunked body: read no more of it, the app fails on it
                    over[0] = True
                    drained = not msg.get("more_body", False) or await drain(seen[0])
                    over.append(drained)
                    return {"type": "http.request", "body": b"", "more_body": False}
            return msg

        async def guarded_send(msg):
            if over[0]:  # whatever the app answered to a cut-off body, the answer is 413
                if msg["type"] == "http.response.start":
                    await send_413(over[1])
                return
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await app(scope, counting_receive, guarded_send)
        finally:
            self._observe(scope, status[0] or 500, t0)

    def _observe(self, scope, status: int, t0: float) -> None:
        m = self.ctx.metrics
        if m is None:
            return
        route = scope.get("route")
        name = getattr(route, "path", None) or "unmatched"
        m.observe(f"HTTP {scope.get('method', '')} {name}", str(status), time.perf_counter() - t0)


def create_app(ctx: WebContext, *, grpc_port: int = 0, title: str = "imgsim") -> ApiMiddleware:
    """The API and console around ``ctx``; the FastAPI app itself is ``.app`` of the result."""
    # interactive docs at /docs (and /redoc) from files in the package: no CDN, so that they
    # work on a machine without internet access
    app = FastAPIOffline(**_NO_TELEMETRY, title=f"{title} HTTP API", version="1",
                  description="The imgsim.v1 API over HTTP/JSON, beside gRPC in the same "
                              "process. Send API keys as `Authorization: Bearer KEY`. Errors "
                              "are `{\"error\": {\"status\", \"code\", \"message\"}}` with the "
                              "gRPC status name as `code`.")
    install_handlers(app)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.error("HTTP %s %s failed", request.method, request.url.path, exc_info=e)
        return JSONResponse(error_body(500, "INTERNAL",
                                       "internal error (details in the server log)"),
                            status_code=500)

    app.include_router(similarity.router(ctx))
    app.include_router(catalogue.router(ctx))
    app.include_router(jobs.router(ctx))

    @app.get("/v1/info", response_model=s.InfoOut, tags=["server"],
             summary="What the console needs before a key: is it serving, are keys required")
    def info() -> dict:
        core = ctx.core()
        public = ctx.authenticator is None  # with keys, what is served is for key holders
        return {"serving": core is not None, "require_api_key": not public,
                "grpc_port": grpc_port,
                "model_version": core.embedder.model_version if core is not None and public
                else "",
                "default_collection": core.default_collection if core is not None else "",
                "jobs": ctx.jobs is not None, "max_body_bytes": ctx.max_body_bytes}

    @app.get("/healthz", tags=["server"], summary="200 SERVING, or 503 NOT_SERVING")
    def healthz() -> JSONResponse:
        serving = ctx.core() is not None
        return JSONResponse({"status": "SERVING" if serving else "NOT_SERVING"},
                            status_code=200 if serving else 503)

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html",
                            headers=CONSOLE_HEADERS)

    app.mount("/console", ConsoleFiles(directory=str(STATIC)), name="console")
    search = SearchEndpoint(lambda request, queries: similarity.run_search(ctx, request, queries))
    return ApiMiddleware(app, ctx, lean={("POST", search.path): search})


class ConsoleFiles(StaticFiles):
    """The console's files, with a strict content security policy: labels and metadata are
    text the console inserts with textContent, and no inline script may run."""

    async def get_response(self, path, scope):
        resp = await super().get_response(path, scope)
        resp.headers.update(CONSOLE_HEADERS)
        return resp
