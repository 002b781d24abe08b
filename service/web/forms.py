"""Form bodies of the lean routes, parsed whole and strictly: multipart/form-data (RFC 7578)
and application/x-www-form-urlencoded. The body limit has bounded the body already, so the
parts are cut out of one bytes object instead of being streamed through a state machine."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

# as Starlette's form parser, so that both doors refuse the same forms
MAX_PARTS = 1000
MAX_FIELD_BYTES = 1024 * 1024  # a part that is not a file

_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_ESCAPE = re.compile(r"\\(.)")


class FormError(ValueError):
    """A body that is not the form its Content-Type says (answered 400)."""


@dataclass(frozen=True, slots=True)
class Part:
    """One form field: a file (``filename`` not None, ``data`` its bytes) or text."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str = ""

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    def text(self) -> str:
        return _decode(self.data)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:  # as Starlette: a client's own 8-bit charset
        return raw.decode("latin-1")


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """``'multipart/form-data; boundary="x"'`` -> ``('multipart/form-data', {'boundary': 'x'})``"""
    main, _, rest = content_type.partition(";")
    params = {}
    for name, value in _PARAM.findall(";" + rest):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = _ESCAPE.sub(r"\1", value[1:-1])
        params[name.lower()] = value.strip()
    return main.strip().lower(), params


def parse_multipart(body: bytes, boundary: str) -> list[Part]:
    """The parts of a multipart/form-data body, in order; a preamble before the first
    boundary and an epilogue after the last are ignored, as RFC 2046 says."""
    if not boundary or len(boundary) > 200:
        raise FormError("multipart body without a valid boundary in its Content-Type")
    delim = b"--" + boundary.encode("latin-1")
    sep = b"\r\n" + delim
    if body.startswith(delim):
        pos = len(delim)
    else:
        first = body.find(sep)
        if first < 0:
            raise FormError("multipart body without its boundary")
        pos = first + len(sep)
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", pos):  # the closing delimiter
            return parts
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise FormError("malformed multipart boundary line")
        head_end = body.find(b"\r\n\r\n", eol)
        if head_end < 0:
            raise FormError("multipart part without the end of its headers")
        start = head_end + 4
        end = body.find(sep, start)
        if end < 0:
            raise FormError("multipart body without its closing boundary")
        if len(parts) == MAX_PARTS:
            raise FormError(f"Too many fields. Maximum number of fields is {MAX_PARTS}.")
        parts.append(_part(body[eol + 2:head_end], body[start:end]))
        pos = end + len(sep)


def _part(head: bytes, data: bytes) -> Part:
    disposition = content_type = ""
    for line in _decode(head).split("\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise FormError("malformed multipart part header")
        name = name.strip().lower()
        if name == "content-disposition":
            disposition = value.strip()
        elif name == "content-type":
            content_type = value.strip()
    kind, params = media_type(disposition)
    if kind != "form-data" or "name" not in params:
        raise FormError('The Content-Disposition header field "name" must be provided.')
    filename = params.get("filename", params.get("filename*"))
    if filename is None and len(data) > MAX_FIELD_BYTES:
        raise FormError(f"Part exceeded maximum size of {MAX_FIELD_BYTES // 1024}KB.")
    return Part(params["name"], data, filename, content_type)


def parse_urlencoded(body: bytes) -> list[Part]:
    """``a=1&b=2`` -> text parts (``+`` and ``%XX`` decoded, UTF-8)."""
    try:
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True,
                          max_num_fields=MAX_PARTS)
    except ValueError:
        raise FormError(f"Too many fields. Maximum number of fields is {MAX_PARTS}.") from None
    parts = [Part(name, value.encode()) for name, value in pairs]
    if any(len(p.data) > MAX_FIELD_BYTES or len(p.name) > MAX_FIELD_BYTES for p in parts):
        raise FormError(f"Field exceeded maximum size of {MAX_FIELD_BYTES // 1024}KB.")
    return parts


def parse_form(body: bytes, content_type: str) -> list[Part]:
    """The fields of a form body; a body of any other type is an empty form (as Starlette's
    ``request.form()``)."""
    kind, params = media_type(content_type)
    if kind == "multipart/form-data":
        return parse_multipart(body, params.get("boundary", ""))
    if kind == "application/x-www-form-urlencoded":
        return parse_urlencoded(body)
    return []
