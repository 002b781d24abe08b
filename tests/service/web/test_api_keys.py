"""API keys over HTTP: the same keys, scopes and status codes as over gRPC."""

from __future__ import annotations

import httpx
import pytest

from tests.service.conftest import digit
from tests.service.web.test_api import error, key_of

pytestmark = pytest.mark.slow


def test_no_key_or_a_bad_one_is_401_on_every_data_route(secured):
    routes = [("get", "/v1/index"), ("get", "/v1/collections"),
              ("get", "/v1/collections/default/images"), ("post", "/v1/search"),
              ("get", "/v1/jobs"), ("get", "/v1/jobs/kinds")]
    for headers in ({}, {"Authorization": "Bearer isk_nope_nope"}, {"Authorization": "Bearer x"}):
        with httpx.Client(base_url=secured.url, headers=headers) as c:
            for method, path in routes:
                r = getattr(c, method)(path)
                error(r, 401, "UNAUTHENTICATED")
                assert r.headers["www-authenticate"] == "Bearer"
    with httpx.Client(base_url=secured.url) as c:  # the console learns that it needs a key
        assert c.get("/v1/info").json()["require_api_key"] is True
        assert c.get("/").status_code == 200


def test_read_keys_read_write_keys_write_and_collections_bound_both(secured, digits_dir):
    p = digit(digits_dir, "5", 0)
    with secured.client("read") as c:
        assert c.post("/v1/search", data={"key": key_of(p)}).status_code == 200
        assert c.get("/v1/collections/default/images").json()["total"] == 400
        assert "read-only" in error(c.post("/v1/upsert", files=[("images", p.read_bytes())]),
                                    403, "PERMISSION_DENIED")
        error(c.post("/v1/delete", json={"keys": [key_of(p)]}), 403, "PERMISSION_DENIED")
        error(c.post("/v1/reload", json={}), 403, "PERMISSION_DENIED")
        error(c.post("/v1/jobs", json={"kind": "tsne"}), 403, "PERMISSION_DENIED")
    with secured.client("other") as c:  # a write key of collection 'other' only
        error(c.post("/v1/search", data={"key": key_of(p)}), 403, "PERMISSION_DENIED")
        error(c.get("/v1/collections/default/thumbnail", params={"key": key_of(p)}), 403,
              "PERMISSION_DENIED")
        assert c.get("/v1/collections").json()["collections"] == []  # sees none of them
    with httpx.Client(base_url=secured.url, headers={"x-api-key": secured.keys["write"]}) as c:
        assert c.get("/v1/index").json()["count"] == 400
