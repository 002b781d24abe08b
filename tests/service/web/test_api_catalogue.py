"""Catalogue browsing over HTTP: collections, pages with filters, records, thumbnails, bytes."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.service.conftest import digit
from tests.service.web.test_api import error, key_of

pytestmark = pytest.mark.slow


def test_collections_list_counts_and_the_served_version(web):
    with web.client() as c:
        r = c.get("/v1/collections").json()
        version = c.get("/v1/index").json()["index_version"]
    assert r["default_collection"] == "default"
    assert r["collections"] == [{"name": "default", "count": 400, "served": True,
                                 "index_version": version, "indexed": 400,
                                 "description": r["collections"][0]["description"]}]


def test_pages_cover_the_collection_once_in_catalogue_order(web):
    seen = []
    with web.client() as c:
        offset = 0
        while offset is not None:
            page = c.get("/v1/collections/default/images",
                         params={"offset": offset, "limit": 150}).json()
            assert page["total"] == 400 and page["offset"] == offset
            seen += page["images"]
            offset = page["next_offset"]
    assert len(seen) == 400 and len({x["key"] for x in seen}) == 400
    assert [x["id"] for x in seen] == sorted(x["id"] for x in seen)
    assert {x["label"] for x in seen} == {str(d) for d in range(10)}


def test_label_metadata_and_prefix_filters(web):
    with web.client() as c:
        page = c.get("/v1/collections/default/images",
                     params={"label": ["3", "5"], "limit": 500}).json()
        assert page["total"] == 80 and {x["label"] for x in page["images"]} == {"3", "5"}
        page = c.get("/v1/collections/default/images", params={"key_prefix": "7/"}).json()
        assert page["total"] == 40 and all(x["key"].startswith("7/") for x in page["images"])
        assert c.get("/v1/collections/default/images",
                     params={"meta": "a=b"}).json()["total"] == 0
        error(c.get("/v1/collections/default/images", params={"limit": 501}), 400,
              "INVALID_ARGUMENT")
        error(c.get("/v1/collections/default/images", params={"offset": -1}), 400,
              "INVALID_ARGUMENT")
        error(c.get("/v1/collections/nowhere/images"), 404, "NOT_FOUND")


def test_one_record_its_bytes_and_its_thumbnail(web, digits_dir):
    p = digit(digits_dir, "6", 2)
    with web.client() as c:
        rec = c.get("/v1/collections/default/image", params={"key": key_of(p)}).json()
        assert rec["label"] == "6" and rec["media_type"] == "image/png"
        raw = c.get("/v1/collections/default/bytes", params={"key": key_of(p)})
        assert raw.headers["content-type"] == "image/png" and raw.content == p.read_bytes()
        th = c.get("/v1/collections/default/thumbnail", params={"key": key_of(p), "size": 16})
        assert th.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(th.content)).size == (16, 16)  # 32x32 halved
        big = c.get("/v1/collections/default/thumbnail", params={"key": key_of(p), "size": 128})
        assert Image.open(io.BytesIO(big.content)).size == (32, 32)  # never enlarged
        error(c.get("/v1/collections/default/thumbnail", params={"key": key_of(p), "size": 4}),
              400, "INVALID_ARGUMENT")
        error(c.get("/v1/collections/default/bytes", params={"key": "6/none"}), 404, "NOT_FOUND")
        error(c.get("/v1/collections/default/image", params={"key": "a\x00b"}), 400,
              "INVALID_ARGUMENT")
