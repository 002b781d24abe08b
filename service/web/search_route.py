"""POST /v1/search as a plain ASGI handler: the API's hot path, without FastAPI's per-request
machinery (dependency solving, form models, response validation), which cost the server more
CPU per search than the rest of the HTTP stack together (docs/BENCHMARKS.md, issue 14).

The FastAPI route of the same path stays: it documents the form in the OpenAPI schema and
serves the FastAPI app alone; ``tests/service/web/test_search_route.py`` holds both to the
same answers. Fields follow FastAPI's form rules: the last of a repeated single field wins, an
empty value is the default, a browser's empty file input is no file."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

import anyio.to_thread
from starlette.requests import Request

from service.domain import ImageInput, SearchQuery, SearchResult
from service.errors import ServiceError
from service.servicer import INTERNAL_MESSAGE
from service.web.errors import error_body, log_service_error, service_error_response
from service.web.forms import FormError, Part, parse_form, parse_urlencoded
from service.web.similarity import parse_meta, search_out

log = logging.getLogger(__name__)

# the fields of the form; any other is ignored, as FastAPI ignores them
TEXT_FIELDS = ("key", "query_collection", "collection")
LIST_FIELDS = ("label", "meta", "exclude_key")
JSON_HEADERS = [(b"content-type", b"application/json")]


class FieldError(ValueError):
    """A field of the wrong type: FastAPI's validation message for it (answered 400)."""


class SearchForm:
    """The search form's fields by name, with FastAPI's rules for reading them."""

    def __init__(self, parts: Sequence[Part]) -> None:
        self.fields: dict[str, list[Part]] = {}
        for p in parts:
            self.fields.setdefault(p.name, []).append(p)

    def text(self, name: str) -> str:
        values = self.fields.get(name)
        if not values:
            return ""
        if values[-1].is_file:
            raise FieldError(f"{name}: Input should be a valid string")
        return values[-1].text()

    def texts(self, name: str) -> tuple[str, ...]:
        values = self.fields.get(name, ())
        if any(p.is_file for p in values):
            raise FieldError(f"{name}.0: Input should be a valid string")
        return tuple(p.text() for p in values)

    def integer(self, name: str, default: int) -> int:
        raw = self.text(name).strip()
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError:
            pass
        try:
            value = float(raw)
        except ValueError:
            value = None
        if value is not None and value.is_integer():
            return int(value)
        raise FieldError(f"{name}: Input should be a valid integer, unable to parse string as "
                         "an integer")

    def number(self, name: str) -> float | None:
        raw = self.text(name).strip()
        if not raw:
            return None
        try:
            return float(raw)
        except ValueError:
            raise FieldError(f"{name}: Input should be a valid number, unable to parse string "
                             "as a number") from None

    def image(self, name: str) -> bytes | None:
        values = self.fields.get(name)
        if not values:
            return None
        p = values[-1]
        if not p.is_file:
            if not p.data:
                return None  # an empty field is the default, as FastAPI reads forms
            raise FieldError(f"{name}: Value error, Expected UploadFile, received: "
                             "<class 'str'>")
        if not p.data and not p.filename:
            return None  # a form's empty file input
        return p.data


def search_query(form: SearchForm, data: bytes | None = None) -> SearchQuery:
    """The query of a search form (``data``: the image when the body itself is the image)."""
    if data is None:
        data = form.image("image")
    collection = form.text("collection")
    key = form.text("key")
    image = ImageInput(data=data, key=key or None,
                       collection=form.text("query_collection") or collection)
    return SearchQuery(image, form.integer("k", 10), collection, form.texts("label"),
                       parse_meta(list(form.texts("meta"))), form.number("max_distance"),
                       form.texts("exclude_key"))


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            raise ConnectionError("the client left")
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(chunks)


class SearchEndpoint:
    """ASGI app of POST /v1/search: a multipart or urlencoded form as the FastAPI route
    documents it, or the image itself as the body (``Content-Type: image/...``) with the other
    fields as query parameters. ``run`` is the routes' shared search (keys, scopes, deadline)."""

    path = "/v1/search"  # the metrics' name of the route, as FastAPI's route has it

    def __init__(self, run: Callable[[Request, list[SearchQuery]], list[SearchResult]]) -> None:
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        scope["route"] = self
        request = Request(scope)
        try:
            body = await read_body(receive)
        except ConnectionError:
            return
        try:
            q = self.query(request, body)
            result = (await anyio.to_thread.run_sync(self.run, request, [q]))[0]
            status, payload = 200, search_json(result)
        except ServiceError as e:
            resp = service_error_response(e)
            log_service_error(request.method, request.url.path, resp.status_code, e)
            await resp(scope, receive, send)
            return
        except (FormError, FieldError) as e:
            status, payload = 400, error_json(400, "INVALID_ARGUMENT", str(e))
        except Exception as e:
            log.error("HTTP %s %s failed", request.method, request.url.path, exc_info=e)
            status, payload = 500, error_json(500, "INTERNAL", INTERNAL_MESSAGE)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*JSON_HEADERS, (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    def query(request: Request, body: bytes) -> SearchQuery:
        ctype = request.headers.get("content-type", "")
        if ctype.lower().startswith("image/"):
            form = SearchForm(parse_urlencoded(request.scope.get("query_string", b"")))
            return search_query(form, body)
        return search_query(SearchForm(parse_form(body, ctype)))


def _dumps(obj: dict) -> bytes:
    # as Starlette's JSONResponse renders: compact, UTF-8, no NaN
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def search_json(r: SearchResult) -> bytes:
    return _dumps(search_out(r))


def error_json(status: int, code: str, message: str) -> bytes:
    return _dumps(error_body(status, code, message))
