"""POST /v1/search's lean handler (service.web.search_route) answers what the documented
FastAPI route answers, request for request, and its form parser is strict."""

from __future__ import annotations

import httpx
import pytest

from service.web.forms import MAX_FIELD_BYTES, FormError, parse_form, parse_multipart
from tests.service.conftest import digit


def body_of(files=None, data=None) -> tuple[bytes, str]:
    """A form encoded as httpx (and so browsers, curl) encode it."""
    req = httpx.Request("POST", "http://x/", files=files, data=data)
    return req.read(), req.headers["content-type"]


# -- the parser ------------------------------------------------------------------------------
def test_multipart_fields_files_and_their_order_as_a_client_encodes_them():
    body, ctype = body_of(files=[("image", ("q.png", b"\x89PNG\r\n--not-a-boundary"))],
                          data={"k": "5", "label": ["1", "é"]})
    parts = parse_form(body, ctype)
    assert [(p.name, p.filename) for p in parts] == [("k", None), ("label", None),
                                                    ("label", None), ("image", "q.png")]
    assert [p.text() for p in parts[:3]] == ["5", "1", "é"]
    assert parts[3].data == b"\x89PNG\r\n--not-a-boundary" and parts[3].is_file


def test_multipart_preamble_quoted_boundary_and_escaped_names():
    body = (b"ignored preamble\r\n--b c\r\n"
            b'Content-Disposition: form-data; name="a\\"b"; filename="x \\"1\\".png"\r\n'
            b"Content-Type: image/png\r\n\r\nDATA\r\n--b c--\r\nepilogue")
    [p] = parse_form(body, 'multipart/form-data; boundary="b c"')
    assert (p.name, p.filename, p.content_type, p.data) == ('a"b', 'x "1".png', "image/png",
                                                            b"DATA")


@pytest.mark.parametrize("body, why", [
    (b"no boundary at all", "without its boundary"),
    (b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n5', "closing boundary"),
    (b'--b\r\nContent-Disposition: form-data; name="k"\r\n5\r\n--b--', "end of its headers"),
    (b'--b\r\nContent-Disposition: attachment\r\n\r\n5\r\n--b--', '"name" must be provided'),
    (b'--b\r\nno colon here\r\n\r\n5\r\n--b--', "part header"),
    (b'--bjunk\r\nContent-Disposition: form-data; name="k"\r\n\r\n5\r\n--b--', "boundary line"),
])
def test_malformed_multipart_bodies_are_refused(body, why):
    with pytest.raises(FormError, match=why):
        parse_multipart(body, "b")


def test_a_text_field_over_a_mebibyte_is_refused_a_file_is_not():
    big = b"x" * (MAX_FIELD_BYTES + 1)
    body, ctype = body_of(files=[("image", ("q.png", big))])
    assert parse_form(body, ctype)[0].data == big
    body = b'--b\r\nContent-Disposition: form-data; name="key"\r\n\r\n' + big + b"\r\n--b--"
    with pytest.raises(FormError, match="maximum size of 1024KB"):
        parse_multipart(body, "b")
    body, ctype = body_of(data={"key": big.decode()})
    with pytest.raises(FormError, match="maximum size of 1024KB"):
        parse_form(body, ctype)


def test_urlencoded_and_other_bodies():
    assert [(p.name, p.text()) for p in parse_form(b"key=1%2Fx&k=&meta=a%3Db+c",
                                                   "application/x-www-form-urlencoded")] == [
        ("key", "1/x"), ("k", ""), ("meta", "a=b c")]
    assert parse_form(b'{"key": "1/x"}', "application/json") == []  # as request.form()


# -- the same answers as the FastAPI route -----------------------------------------------------
@pytest.fixture(scope="module")
def fastapi_only(web):
    """The FastAPI app alone (its /v1/search route, not the lean handler), on the web
    fixture's server objects."""
    from service.web.app import create_app
    from service.web.serve import HttpServer, web_context

    http = HttpServer(create_app(web_context(web.server)).app, "127.0.0.1", 0)
    yield http.url.rstrip("/")
    http.stop()


def requests_of(digits_dir) -> list[dict]:
    q = digit(digits_dir, "7", 3)
    key = f"{q.parent.name}/{q.stem}"
    png = q.read_bytes()
    return [
        {"files": {"image": ("q.png", png)}, "data": {"k": "5"}},
        {"files": {"image": ("q.png", png)}, "data": {"k": "8", "label": ["1", "7"]}},
        {"data": {"key": key, "k": "3", "exclude_key": [key]}},
        {"data": {"key": key, "k": "10", "max_distance": "0.5"}},
        {"data": {"key": key, "meta": ["source=nowhere"]}},
        {"data": {"key": key, "k": ["3", "4"]}},  # the last of a repeated field
        {"data": {"key": key, "k": "", "max_distance": ""}},  # empty: the defaults
        {"data": {"key": key, "k": "2.0"}},
        {"files": {"image": ("", b"")}, "data": {"key": key, "k": "2"}},  # empty file input
        {"data": {"key": key, "query_collection": "default", "collection": "default"}},
        # errors: validation, domain, the core's own
        {"data": {"key": key, "k": "many"}},
        {"data": {"key": key, "max_distance": "far"}},
        {"data": {"key": key, "k": "51"}},
        {"data": {"key": key, "meta": ["novalue"]}},
        {"data": {"k": "3"}},
        {"data": {"key": "9/none"}},
        {"data": {"key": key, "collection": "elsewhere"}},
        {"files": {"image": ("x.png", b"not an image")}},
        {"files": {"key": ("k.txt", b"1/x")}},
        {"files": {"label": ("l.txt", b"1")}, "data": {"key": key}},
        {"data": {"image": "not a file", "key": key}},
        {"content": b'{"key": "x"}', "headers": {"content-type": "application/json"}},
        {},
    ]


def test_every_answer_is_the_fastapi_routes(web, fastapi_only, digits_dir):
    with httpx.Client(base_url=web.url, timeout=60) as lean, \
            httpx.Client(base_url=fastapi_only, timeout=60) as full:
        for req in requests_of(digits_dir):
            a, b = lean.post("/v1/search", **req), full.post("/v1/search", **req)
            assert (a.status_code, a.json()) == (b.status_code, b.json()), req
            assert a.headers["content-type"] == b.headers["content-type"]


def test_a_malformed_form_is_400_through_both(web, fastapi_only):
    for url in (web.url, fastapi_only):
        r = httpx.post(url + "/v1/search", content=b"--b\r\nnothing",
                       headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_ARGUMENT"


def test_the_image_as_the_body_with_fields_in_the_query(web, digits_dir):
    q = digit(digits_dir, "7", 3)
    with httpx.Client(base_url=web.url, timeout=60) as c:
        want = c.post("/v1/search", files={"image": ("q.png", q.read_bytes())},
                      data={"k": "4", "label": ["7"]}).json()
        r = c.post("/v1/search?k=4&label=7", content=q.read_bytes(),
                   headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.json() == want
        assert [h["label"] for h in want["hits"]] == ["7"] * 4
        r = c.post("/v1/search", content=b"not an image", headers={"content-type": "image/png"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_ARGUMENT"
        spec = c.get("/openapi.json").json()["paths"]["/v1/search"]["post"]
        assert {"multipart/form-data", "image/*"} <= set(spec["requestBody"]["content"])
