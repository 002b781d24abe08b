"""Domain errors -> HTTP status codes and a JSON error body, through the gRPC adapter's table.

A service error has one gRPC status (``service.servicer.STATUS_OF``); each gRPC status has the
HTTP code people expect (Google's API design guide mapping, except FAILED_PRECONDITION: 409
Conflict, as most HTTP APIs answer a state conflict), so HTTP and gRPC always agree."""

from __future__ import annotations

import logging

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError
from service.servicer import INTERNAL_MESSAGE, STATUS_OF

log = logging.getLogger(__name__)

HTTP_OF_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    # the resource's state forbids the call (cancel a finished job, a model whose index
    # another model published): a conflict, not a bad request (retrying it unchanged fails)
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# HTTP-only conditions (no domain error raises them) and the gRPC name their body carries
GRPC_NAME_OF_HTTP = {413: "RESOURCE_EXHAUSTED", 405: "UNIMPLEMENTED", 422: "INVALID_ARGUMENT",
                     404: "NOT_FOUND", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED",
                     403: "PERMISSION_DENIED"}


def grpc_status(e: ServiceError) -> grpc.StatusCode:
    return STATUS_OF.get(type(e), grpc.StatusCode.INTERNAL)


def error_body(status: int, code: str, message: str) -> dict:
    """``{"error": {"status": 404, "code": "NOT_FOUND", "message": "..."}}``"""
    return {"error": {"status": status, "code": code, "message": message}}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": "1"}
    return JSONResponse(error_body(status, code, message), status_code=status, headers=headers)


def service_error_response(e: ServiceError) -> JSONResponse:
    code = grpc_status(e)
    status = HTTP_OF_GRPC.get(code, 500)
    return error_response(status, code.name, str(e) if status != 500 else INTERNAL_MESSAGE)


def log_service_error(method: str, path: str, status: int, e: ServiceError) -> None:
    # as the gRPC adapter does: a client's error is a warning under its own code
    log.warning("HTTP %s %s %d %s", method, path, status, e,
                extra={"method": f"HTTP {method} {path}", "code": grpc_status(e).name})


def install_handlers(app) -> None:
    """JSON bodies for every error: domain errors, FastAPI's own (404 route, 422 validation)."""

    @app.exception_handler(ServiceError)
    async def _service(request: Request, e: ServiceError) -> JSONResponse:
        resp = service_error_response(e)
        log_service_error(request.method, request.url.path, resp.status_code, e)
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(400, "INVALID_ARGUMENT", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, GRPC_NAME_OF_HTTP.get(e.status_code, "UNKNOWN"),
                              str(e.detail))
