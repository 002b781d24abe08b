"""Upsert, delete and reload over HTTP, the body limit (413, nothing stored), and hostile labels
kept as the text they are."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.client import SimilarityClient
from tests.service.conftest import digit, encoded
from tests.service.web.conftest import serve
from tests.service.web.test_api import error

pytestmark = pytest.mark.slow

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def test_upsert_then_search_finds_it_with_label_and_metadata_then_delete(web, digits_dir):
    img = digit(digits_dir, "3", 5)
    with web.client() as c, SimilarityClient(web.grpc_target) as g:
        before = c.get("/v1/index").json()
        r = c.post("/v1/upsert", files=[("images", ("new3.png", img.read_bytes()))],
                   data={"label": "three", "meta": ["source=http", "note=" + HOSTILE]})
        assert r.status_code == 200, r.text
        up = r.json()
        assert (up["inserted"], up["updated"], up["count"]) == (1, 0, before["count"] + 1)
        assert up["index_version"] != before["index_version"]
        again = c.post("/v1/upsert", files=[("images", ("new3.png", img.read_bytes()))],
                       data={"label": "three", "meta": ["source=http", "note=" + HOSTILE]})
        assert again.json()["unchanged"] == 1  # idempotent by key
        hits = c.post("/v1/search", files={"image": img.open("rb")},
                      data={"meta": ["source=http"]}).json()["hits"]
        assert [h["key"] for h in hits] == ["new3"]
        assert hits[0]["label"] == "three" and hits[0]["metadata"]["note"] == HOSTILE
        # gRPC sees the same change: one core, one index
        assert g.search(img.read_bytes(), 1, metadata={"source": "http"}).hits[0].key == "new3"
        d = c.post("/v1/delete", json={"keys": ["new3"]}).json()
        assert d["deleted"] == 1 and d["count"] == before["count"]
        assert "not in collection" in error(c.post("/v1/delete", json={"keys": ["new3"]}), 404,
                                            "NOT_FOUND")
        assert c.post("/v1/delete", json={"keys": ["new3"], "ignore_missing": True}).json()[
            "missing"] == ["new3"]


def test_upsert_json_with_several_items_is_all_or_nothing(web, digits_dir):
    a, b = digit(digits_dir, "8", 7), digit(digits_dir, "8", 8)
    items = [{"key": "j/a", "data": base64.b64encode(a.read_bytes()).decode(), "label": "8"},
             {"key": "j/b", "data": base64.b64encode(b"not an image").decode(), "label": "8"}]
    with web.client() as c:
        count = c.get("/v1/index").json()["count"]
        error(c.post("/v1/upsert/json", json={"items": items}), 400, "INVALID_ARGUMENT")
        assert c.get("/v1/index").json()["count"] == count
        error(c.get("/v1/collections/default/image", params={"key": "j/a"}), 404, "NOT_FOUND")
        items[1]["data"] = base64.b64encode(b.read_bytes()).decode()
        r = c.post("/v1/upsert/json", json={"items": items}).json()
        assert r["inserted"] == 2 and r["count"] == count + 2
        assert c.post("/v1/delete", json={"keys": ["j/a", "j/b"]}).json()["deleted"] == 2


def test_an_upload_over_the_limit_gets_413_and_nothing_is_stored(web):
    rng = np.random.default_rng(0)  # noise does not compress: a PNG well over 64 KiB
    big = encoded(Image.fromarray(rng.integers(0, 255, (256, 256, 3), np.uint8)), "PNG")
    assert len(big) > 64 * 1024
    with web.client() as c:
        before = c.get("/v1/index").json()
        for path in ("/v1/search", "/v1/verify"):
            error(c.post(path, files={"image" if path == "/v1/search" else "a": big}), 413,
                  "RESOURCE_EXHAUSTED")
        # a chunked body (no Content-Length) is cut off at the limit too. It opens as a valid
        # multipart part, so that the parser reads on to the limit whichever way the chunks
        # arrive (a malformed first chunk may be refused with 400 before the limit is seen)
        head = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
                b"Content-Type: image/png\r\n\r\n")
        r = c.post("/v1/search", content=iter([head] + [b"x" * 40_000] * 3),
                   headers={"content-type": "multipart/form-data; boundary=b"})
        error(r, 413, "RESOURCE_EXHAUSTED")
    # the upsert limit is the stream's (max_upsert_bytes): a second server on the same
    # index, with a smaller one, shows it

    small = serve(web.root, Path(web.server.cfg.checkpoint), max_message_bytes=64 * 1024,
                  max_upsert_bytes=64 * 1024)
    try:
        with small.client() as c:
            error(c.post("/v1/upsert", files=[("images", ("big.png", big))]), 413,
                  "RESOURCE_EXHAUSTED")
            after = c.get("/v1/index").json()
            assert (after["count"], after["index_version"]) == (before["count"],
                                                                before["index_version"])
            error(c.get("/v1/collections/default/image", params={"key": "big"}), 404,
                  "NOT_FOUND")
    finally:
        small.server.stop(0)


def test_reload_swaps_to_a_published_version_and_refuses_unknown_ones(web, digits_dir):
    with web.client() as c:
        first = c.get("/v1/index").json()["index_version"]
        img = digit(digits_dir, "0", 9)
        newer = c.post("/v1/upsert", files=[("images", ("r0.png", img.read_bytes()))]).json()
        r = c.post("/v1/reload", json={"version": first}).json()
        assert (r["previous_version"], r["index_version"]) == (newer["index_version"], first)
        assert c.get("/v1/index").json()["index_version"] == first
        error(c.post("/v1/reload", json={"version": "no-such-version"}), 404, "NOT_FOUND")
        error(c.post("/v1/reload", json={"version": "../x"}), 400, "INVALID_ARGUMENT")
        assert c.post("/v1/reload", json={}).json()["index_version"] == newer["index_version"]
        c.post("/v1/delete", json={"keys": ["r0"]})


def test_upsert_keys_and_labels_must_pair_with_the_images(web, digits_dir):
    img = digit(digits_dir, "2", 9).read_bytes()
    with web.client() as c:
        assert "2 keys for 1 images" in error(
            c.post("/v1/upsert", files=[("images", ("a.png", img))], data={"key": ["a", "b"]}),
            400, "INVALID_ARGUMENT")
        buf = io.BytesIO(img)
        error(c.post("/v1/upsert", files=[("images", ("a.png", buf)), ("images", ("b.png", img)),
                                          ("images", ("c.png", img))],
                     data={"label": ["x", "y"]}), 400, "INVALID_ARGUMENT")


def test_an_image_over_the_pixel_limit_is_400_on_search_and_upsert_and_not_stored(web):
    """49 megapixels in 6 KB of PNG: the decoder's pixel limit, not the body limit, refuses it."""
    huge = encoded(Image.new("1", (7000, 7000)), "PNG")
    assert len(huge) < 64 * 1024
    with web.client() as c:
        before = c.get("/v1/index").json()
        assert "pixels" in error(c.post("/v1/search", files={"image": huge}), 400,
                                 "INVALID_ARGUMENT")
        error(c.post("/v1/upsert", files=[("images", ("huge.png", huge))]), 400,
              "INVALID_ARGUMENT")
        assert c.get("/v1/index").json()["index_version"] == before["index_version"]
        error(c.get("/v1/collections/default/image", params={"key": "huge"}), 404, "NOT_FOUND")
