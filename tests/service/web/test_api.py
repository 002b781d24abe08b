"""The HTTP/JSON API over a real server on loopback: every endpoint answers what the gRPC API
answers for the same request, with the same limits and errors (as HTTP codes)."""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest

from service.client import SimilarityClient
from service.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from service.web.errors import service_error_response
from tests.service.conftest import digit

pytestmark = pytest.mark.slow


def key_of(path) -> str:
    return f"{path.parent.name}/{path.stem}"


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["status"] == status and body["code"] == code
    return body["message"]


def test_describe_info_and_health_agree_with_grpc(web):
    with web.client() as c, SimilarityClient(web.grpc_target) as g:
        d = c.get("/v1/index").json()
        want = g.describe()
        assert d["index_version"] == want.index_version and d["count"] == want.count == 400
        assert d["factory"] == want.factory and d["model_version"] == want.model_version
        assert d["threshold"] == pytest.approx(want.threshold)
        assert d["collections"] == ["default"]
        info = c.get("/v1/info").json()
        assert info["serving"] and not info["require_api_key"] and info["jobs"]
        assert info["grpc_port"] == web.server.port
        assert c.get("/healthz").json() == {"status": "SERVING"}


def test_search_by_upload_finds_the_image_itself_and_matches_grpc(web, digits_dir):
    q = digit(digits_dir, "7", 3)
    with web.client() as c, SimilarityClient(web.grpc_target) as g:
        r = c.post("/v1/search", files={"image": q.open("rb")}, data={"k": "5"})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert hits[0]["key"] == key_of(q) and hits[0]["distance"] == pytest.approx(0, abs=1e-3)
        assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
        want = g.search(q.read_bytes(), 5)
        assert [h["key"] for h in hits] == [h.key for h in want.hits]
        assert [h["distance"] for h in hits] == pytest.approx([h.distance for h in want.hits],
                                                              abs=1e-5)


def test_search_filters_are_those_of_the_grpc_call(web, digits_dir):
    q = digit(digits_dir, "3", 0)
    with web.client() as c:
        r = c.post("/v1/search", files={"image": q.open("rb")},
                   data={"k": "8", "label": ["1", "2"]}).json()
        assert {h["label"] for h in r["hits"]} <= {"1", "2"} and len(r["hits"]) == 8
        r = c.post("/v1/search", data={"key": key_of(q), "k": "3",
                                       "exclude_key": [key_of(q)]}).json()
        assert key_of(q) not in [h["key"] for h in r["hits"]] and len(r["hits"]) == 3
        near = c.post("/v1/search", data={"key": key_of(q), "k": "10"}).json()["hits"]
        cut = near[4]["distance"]
        r = c.post("/v1/search", data={"key": key_of(q), "k": "10",
                                       "max_distance": str(cut)}).json()
        assert all(h["distance"] <= cut for h in r["hits"]) and 5 <= len(r["hits"]) < 10
        # metadata equality: the golden catalogue has none, so nothing matches a pair
        r = c.post("/v1/search", data={"key": key_of(q), "meta": ["source=nowhere"]}).json()
        assert r["hits"] == []
        msg = error(c.post("/v1/search", data={"key": key_of(q), "meta": ["novalue"]}),
                    400, "INVALID_ARGUMENT")
        assert "NAME=VALUE" in msg


def test_k_bounds_and_bad_inputs_answer_400_and_unknown_keys_404(web, digits_dir):
    q = digit(digits_dir, "1", 0)
    with web.client() as c:
        assert "between 1 and 50" in error(
            c.post("/v1/search", data={"key": key_of(q), "k": "51"}), 400, "INVALID_ARGUMENT")
        assert len(c.post("/v1/search", data={"key": key_of(q), "k": "0"}).json()["hits"]) == 10
        error(c.post("/v1/search", files={"image": ("x.png", b"not an image")}), 400,
              "INVALID_ARGUMENT")
        assert "missing" in error(c.post("/v1/search", data={"k": "3"}), 400, "INVALID_ARGUMENT")
        assert "no image with key" in error(c.post("/v1/search", data={"key": "9/none"}), 404,
                                            "NOT_FOUND")
        error(c.post("/v1/search", data={"key": key_of(q), "collection": "elsewhere"}), 404,
              "NOT_FOUND")
        error(c.post("/v1/search", data={"key": key_of(q), "k": "many"}), 400,
              "INVALID_ARGUMENT")
        error(c.get("/v1/nothing-here"), 404, "NOT_FOUND")


def test_batch_search_mixes_uploads_and_keys_within_the_batch_limit(web, digits_dir):
    a, b = digit(digits_dir, "2", 1), digit(digits_dir, "5", 2)
    with web.client() as c:
        r = c.post("/v1/search/batch", json={"queries": [
            {"query": {"data": b64(a)}, "k": 2}, {"query": {"key": key_of(b)}, "k": 3}]})
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        assert [len(x["hits"]) for x in res] == [2, 3]
        assert res[0]["hits"][0]["key"] == key_of(a) and res[1]["hits"][0]["key"] == key_of(b)
        five = [{"query": {"key": key_of(a)}}] * 5
        assert "limit is 4" in error(c.post("/v1/search/batch", json={"queries": five}), 400,
                                     "INVALID_ARGUMENT")
        error(c.post("/v1/search/batch", json={"queries": [{"query": {"data": "%%%"}}]}), 400,
              "INVALID_ARGUMENT")


def test_verify_two_images_one_against_an_identity_and_bad_combinations(web, digits_dir):
    a, b, other = digit(digits_dir, "4", 0), digit(digits_dir, "4", 1), digit(digits_dir, "0", 0)
    with web.client() as c, SimilarityClient(web.grpc_target) as g:
        r = c.post("/v1/verify", files={"a": a.open("rb"), "b": b.open("rb")}).json()
        want = g.verify(a.read_bytes(), b.read_bytes())
        assert r["distance"] == pytest.approx(want.distance, abs=1e-5)
        assert r["same"] == want.same and r["threshold"] == pytest.approx(want.threshold)
        far = c.post("/v1/verify", data={"a_key": key_of(a), "b_key": key_of(other)}).json()
        assert far["distance"] > r["distance"]
        ident = c.post("/v1/verify", files={"a": a.open("rb")}, data={"identity": "4"}).json()
        assert ident["enrolled_images"] == 40 and ident["nearest_key"] == key_of(a)
        assert ident["distance"] == pytest.approx(0, abs=1e-3) and ident["same"]
        j = c.post("/v1/verify/json", json={"a": {"data": b64(a)}, "b": {"key": key_of(b)}})
        assert j.json()["distance"] == pytest.approx(r["distance"], abs=1e-4)
        assert "not both" in error(c.post("/v1/verify", data={
            "a_key": key_of(a), "b_key": key_of(b), "identity": "4"}), 400, "INVALID_ARGUMENT")
        error(c.post("/v1/verify", data={"a_key": key_of(a), "identity": "nobody"}), 404,
              "NOT_FOUND")
        error(c.post("/v1/verify", data={"a_key": key_of(a), "b_key": key_of(b),
                                         "threshold": "-1"}), 400, "INVALID_ARGUMENT")


def test_embed_returns_the_grpc_vectors(web, digits_dir):
    a, b = digit(digits_dir, "6", 0), digit(digits_dir, "8", 0)
    with web.client() as c, SimilarityClient(web.grpc_target) as g:
        r = c.post("/v1/embed", json={"images": [{"data": b64(a)}, {"key": key_of(b)}]}).json()
        got = np.array(r["embeddings"], np.float32)
        assert got.shape == (2, r["dimension"]) and r["metric"] == "cosine"
        np.testing.assert_allclose(got, g.embed([a.read_bytes(), key_of(b)]), atol=1e-5)
        assert "no images" in error(c.post("/v1/embed", json={"images": []}), 400,
                                    "INVALID_ARGUMENT")


def test_deadline_header_answers_504(web, digits_dir):
    q = digit(digits_dir, "9", 0)
    with web.client() as c:
        r = c.post("/v1/search", files={"image": q.open("rb")},
                   headers={"X-Request-Timeout": "0.000001"})
        error(r, 504, "DEADLINE_EXCEEDED")
        error(c.post("/v1/search", data={"key": key_of(q)}, headers={"X-Request-Timeout": "x"}),
              400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("exc, status, code", [
    (InvalidInput, 400, "INVALID_ARGUMENT"), (FailedPrecondition, 409, "FAILED_PRECONDITION"),
    (Unauthenticated, 401, "UNAUTHENTICATED"), (PermissionDenied, 403, "PERMISSION_DENIED"),
    (NotFound, 404, "NOT_FOUND"), (Overloaded, 429, "RESOURCE_EXHAUSTED"),
    (Unavailable, 503, "UNAVAILABLE"), (DeadlineExceeded, 504, "DEADLINE_EXCEEDED")])
def test_every_domain_error_has_the_http_code_of_its_grpc_status(exc, status, code):
    from service.servicer import STATUS_OF

    assert STATUS_OF[exc] == getattr(grpc.StatusCode, code)
    r = service_error_response(exc("why"))
    assert r.status_code == status
    assert r.body == b'{"error":{"status":%d,"code":"%s","message":"why"}}' % (status,
                                                                              code.encode())


def test_a_server_still_loading_answers_503():
    import httpx

    from service.web.app import create_app
    from service.web.context import WebContext
    from service.web.serve import HttpServer

    http = HttpServer(create_app(WebContext(lambda: None)), "127.0.0.1", 0)
    try:
        with httpx.Client(base_url=http.url) as c:
            r = c.post("/v1/search", data={"key": "1/x"})
            error(r, 503, "UNAVAILABLE")
            assert r.headers["retry-after"] == "1"
            assert c.get("/healthz").status_code == 503
            assert c.get("/v1/info").json()["serving"] is False
    finally:
        http.stop()


def test_keep_alive_answers_do_not_wait_for_the_clients_delayed_ack(web):
    """The HTTP listener is TCP with Nagle off (accepted sockets inherit it): with Nagle on, every
    keep-alive response's second write waited ~40 ms for the client's delayed ACK."""
    import socket

    sock = web.server.http.sock
    assert sock.proto == socket.IPPROTO_TCP
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_openapi_schema_and_offline_docs_are_served(web, browser, tmp_path):
    from tests.service.web.conftest import screenshot

    with web.client() as c:
        spec = c.get("/openapi.json").json()
        assert {"/v1/search", "/v1/search/batch", "/v1/verify", "/v1/embed", "/v1/upsert",
                "/v1/delete", "/v1/index", "/v1/reload", "/v1/collections",
                "/v1/collections/{collection}/images", "/v1/jobs", "/v1/jobs/{job_id}",
                "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/files/{name}"} <= set(spec["paths"])
        search = spec["paths"]["/v1/search"]["post"]
        form = search["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        fields = spec["components"]["schemas"][form.rsplit("/", 1)[1]]["properties"]
        assert {"image", "key", "k", "label", "meta", "max_distance", "exclude_key"} <= set(fields)
        docs = c.get("/docs").text
        assert "cdn" not in docs.lower()  # no network needed
    page = browser.new_page()
    try:
        page.goto(web.url + "/docs")
        page.wait_for_selector(".opblock")  # Swagger UI rendered the operations
        paths = {p.replace("\u200b", "") for p in
                 page.locator(".opblock-summary-path").all_text_contents()}
        assert {"/v1/search", "/v1/search/batch", "/v1/jobs/{job_id}/files/{name}"} <= paths
        assert "imgsim HTTP API" in page.text_content("body")
        screenshot(page, tmp_path, "docs")
    finally:
        page.close()
