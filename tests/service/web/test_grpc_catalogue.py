"""The catalogue browsing RPCs (imgsim.v1.CatalogService) and JobService.FetchArtifact: what
the HTTP API answers, gRPC clients get too."""

from __future__ import annotations

import io
import time

import grpc
import pytest
from PIL import Image

from imgsim.v1 import catalog_pb2 as cpb
from imgsim.v1 import catalog_pb2_grpc as cpb_grpc
from imgsim.v1 import jobs_pb2 as jpb
from imgsim.v1 import jobs_pb2_grpc as jpb_grpc
from service.jobs.artifacts import CHUNK_BYTES
from tests.service.conftest import digit
from tests.service.web.test_api import key_of

pytestmark = pytest.mark.slow


@pytest.fixture()
def stub(web):
    with grpc.insecure_channel(web.grpc_target) as ch:
        yield cpb_grpc.CatalogServiceStub(ch)


def test_reflection_lists_the_catalogue_service(web):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(web.grpc_target) as ch:
        assert "imgsim.v1.CatalogService" in ProtoReflectionDescriptorDatabase(ch).get_services()


def test_collections_and_pages_match_the_http_api(web, stub):
    cols = stub.ListCollections(cpb.ListCollectionsRequest())
    assert cols.default_collection == "default"
    assert [(c.name, c.count, c.served, c.indexed) for c in cols.collections] == [
        ("default", 400, True, 400)]
    keys, offset = [], 0
    while True:
        page = stub.ListImages(cpb.ListImagesRequest(offset=offset, limit=128))
        keys += [r.key for r in page.images]
        if not page.has_more:
            break
        offset = page.next_offset
    assert len(keys) == len(set(keys)) == 400 and page.total == 400
    with web.client() as c:
        http = c.get("/v1/collections/default/images", params={"limit": 128}).json()
    assert keys[:128] == [x["key"] for x in http["images"]]
    only = stub.ListImages(cpb.ListImagesRequest(labels=["2"], key_prefix="2/"))
    assert only.total == 40 and {r.label for r in only.images} == {"2"}


def test_record_thumbnail_bytes_and_errors(web, stub, digits_dir):
    p = digit(digits_dir, "1", 4)
    rec = stub.GetImage(cpb.GetImageRequest(key=key_of(p)))
    assert rec.label == "1" and rec.media_type == "image/png" and rec.id > 0
    assert stub.GetImageBytes(cpb.GetImageRequest(key=key_of(p))).data == p.read_bytes()
    th = stub.GetThumbnail(cpb.GetThumbnailRequest(key=key_of(p), size=16))
    assert th.media_type == "image/png" and Image.open(io.BytesIO(th.data)).size == (16, 16)
    for call, req, code in [
            (stub.GetImage, cpb.GetImageRequest(key="1/none"), grpc.StatusCode.NOT_FOUND),
            (stub.ListImages, cpb.ListImagesRequest(collection="nope"), grpc.StatusCode.NOT_FOUND),
            (stub.ListImages, cpb.ListImagesRequest(limit=501), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.GetThumbnail, cpb.GetThumbnailRequest(key=key_of(p), size=1000),
             grpc.StatusCode.INVALID_ARGUMENT)]:
        with pytest.raises(grpc.RpcError) as e:
            call(req)
        assert e.value.code() == code


def test_fetch_artifact_streams_a_jobs_file_in_chunks(web):
    with web.client() as c:
        job = c.post("/v1/jobs", json={"kind": "tsne", "params": {"sample": 40,
                                                                  "perplexity": 5}}).json()
        deadline = time.monotonic() + 120
        while (done := c.get(f"/v1/jobs/{job['id']}").json())["state"] not in (
                "succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert done["state"] == "succeeded", done["error"]
        png = c.get(f"/v1/jobs/{job['id']}/files/tsne.png").content
    with grpc.insecure_channel(web.grpc_target) as ch:
        jobs = jpb_grpc.JobServiceStub(ch)
        chunks = list(jobs.FetchArtifact(jpb.FetchArtifactRequest(job_id=job["id"],
                                                                  name="tsne.png")))
        assert chunks[0].name == "tsne.png" and chunks[0].media_type == "image/png"
        assert chunks[0].size == len(png) and b"".join(x.data for x in chunks) == png
        assert len(chunks) == -(-len(png) // CHUNK_BYTES) > 1
        for name, code in [("../../cat.db", grpc.StatusCode.NOT_FOUND),
                           ("nope.png", grpc.StatusCode.NOT_FOUND)]:
            with pytest.raises(grpc.RpcError) as e:
                list(jobs.FetchArtifact(jpb.FetchArtifactRequest(job_id=job["id"], name=name)))
            assert e.value.code() == code
        with pytest.raises(grpc.RpcError) as e:
            list(jobs.FetchArtifact(jpb.FetchArtifactRequest(job_id=10**6, name="x")))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_catalogue_rpcs_need_a_key_that_reads_the_collection(secured, digits_dir):
    p = digit(digits_dir, "1", 0)
    with grpc.insecure_channel(secured.grpc_target) as ch:
        stub = cpb_grpc.CatalogServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.ListCollections(cpb.ListCollectionsRequest())
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        other = (("authorization", f"Bearer {secured.keys['other']}"),)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetImage(cpb.GetImageRequest(key=key_of(p)), metadata=other)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert list(stub.ListCollections(cpb.ListCollectionsRequest(),
                                         metadata=other).collections) == []
        read = (("authorization", f"Bearer {secured.keys['read']}"),)
        assert stub.GetImage(cpb.GetImageRequest(key=key_of(p)), metadata=read).label == "1"
