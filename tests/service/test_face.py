"""The face step travels with the checkpoint: index build, reindex, Upsert and queries get the
same preprocessing; `require` refuses a face-less image everywhere; `serve --face` only checks."""

import logging
from dataclasses import replace

import grpc
import numpy as np
import pytest

import training.face.haar
from indexer import reindex as rx
from indexer.build import BuildConfig, build_index
from indexer.catalog import all_images, open_catalog
from indexer.versions import load_index_version
from service.client import SimilarityClient
from service.core import CoreOptions, ImageInput, SimilarityCore, UpsertItem
from service.errors import InvalidInput
from service.face import check_face_matches_spec, check_face_mode
from service.images import ImagePipeline
from service.server import ServeConfig, Server, load_core
from tests.conftest import shared_data
from tests.service.conftest import digit
from training.checkpoint import load_checkpoint, save_checkpoint
from training.models.embedder import Embedder


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
    return Embedder.from_checkpoint(tiny_checkpoint)


def face_checkpoint(tiny_checkpoint, path, on_miss):
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.spec = replace(ckpt.spec, face_align="haar-crop", face_on_miss=on_miss)
    return save_checkpoint(path, ckpt)


@pytest.fixture()
def faces_in_all_but_threes(monkeypatch):
    """The Haar cascade finds no face in digits; pretend it finds one, a fixed box, in every
    image but the 3s (the digit images are 32x32; PIL crops outside them to black)."""
    def detect(img):
        return [] if _is_three(img) else [(6, 4, 18, 22)]

    monkeypatch.setattr(training.face.haar, "detect_faces", detect)


_THREES: set[bytes] = set()


def _is_three(img):
    return np.asarray(img.convert("L")).tobytes() in _THREES


@pytest.fixture(scope="module", autouse=True)
def _threes(digits_dir):
    from PIL import Image

    for f in (digits_dir / "3").iterdir():
        with Image.open(f) as im:
            _THREES.add(np.asarray(im.convert("L")).tobytes())


def _core(ckpt, root, **options):
    return SimilarityCore(Embedder.from_checkpoint(ckpt), load_index_version(root / "idx"),
                          open_catalog(f"sqlite:///{root / 'cat.db'}"),
                          options=CoreOptions(**options))


def _build(ckpt, digits_dir, root):
    return build_index(BuildConfig(checkpoint=str(ckpt), images=str(digits_dir),
                                   index_root=str(root / "idx"),
                                   catalog_url=f"sqlite:///{root / 'cat.db'}", num_workers=0,
                                   progress=False, factory="Flat"))


def test_index_build_and_queries_get_the_same_face_crop(tiny_checkpoint, digits_dir, tmp_path,
                                                        faces_in_all_but_threes, embedder):
    ckpt = face_checkpoint(tiny_checkpoint, tmp_path / "face.pt", "fallback")
    _build(ckpt, digits_dir, tmp_path)
    core = _core(ckpt, tmp_path)
    try:
        for label in ("1", "3"):  # cropped, and (no face, fallback) the whole image
            f = digit(digits_dir, label)
            key = f"{label}/{f.stem}"
            queried = core.front.vector(ImageInput(data=f.read_bytes()))
            indexed = core.front.vector(ImageInput(key=key))  # read back from the index
            # the same pixels; the forward pass in batches of 64 vs 1 differs in the last bit
            np.testing.assert_allclose(queried, indexed, atol=1e-6)
            hit = core.search(ImageInput(data=f.read_bytes()), k=1).hits[0]
            assert hit.key == key and hit.distance < 1e-6
            whole = embedder.embed_paths([f])[0]  # the checkpoint without the face step
            assert np.allclose(queried, whole, atol=1e-6) == (label == "3")
        assert core.describe().face == "haar-crop (no face: fallback)"
    finally:
        core.close()


def test_replies_say_whether_a_face_was_found(tiny_checkpoint, digits_dir, tmp_path,
                                              faces_in_all_but_threes, monkeypatch):
    """With face_on_miss = fallback an image without a face is still answered, and every reply
    says so (FACE_OUTCOME_NOT_FOUND), through the core, gRPC and HTTP alike; a catalogued
    image (by key) and a model without a face step say nothing (UNSPECIFIED)."""
    import base64

    from imgsim.v1 import similarity_pb2 as pb
    from tests.service.web.conftest import serve

    ckpt = face_checkpoint(tiny_checkpoint, tmp_path / "face.pt", "fallback")
    _build(ckpt, digits_dir, tmp_path)
    one, three = (digit(digits_dir, d).read_bytes() for d in ("1", "3"))
    key = f"5/{digit(digits_dir, '5').stem}"
    core = _core(ckpt, tmp_path)
    try:
        assert core.search(ImageInput(data=one), k=1).query_face is True
        assert core.search(ImageInput(data=three), k=1).query_face is False
        assert core.search(ImageInput(key=key), k=1).query_face is None
        r = core.verify(ImageInput(data=one), ImageInput(data=three))
        assert (r.face_a, r.face_b) == (True, False)
        got = core.embed_faces([ImageInput(data=three), ImageInput(key=key),
                                ImageInput(data=one)])
        assert got.faces == [False, None, True] and np.isfinite(got.vectors).all()
    finally:
        core.close()
    monkeypatch.setenv("IMGSIM_JOBS_ROOT", str(tmp_path / "jobs"))
    served = serve(tmp_path, ckpt)
    try:
        with SimilarityClient(served.grpc_target) as c:
            v = c.verify(one, three)
            assert (v.face_a, v.face_b) == (pb.FACE_OUTCOME_FOUND, pb.FACE_OUTCOME_NOT_FOUND)
            assert c.search(three, 2).query_face == pb.FACE_OUTCOME_NOT_FOUND
            assert [e.face for e in c.embed_response([one, key]).embeddings] == \
                [pb.FACE_OUTCOME_FOUND, pb.FACE_OUTCOME_UNSPECIFIED]
        with served.client() as h:
            b64 = {n: base64.b64encode(d).decode() for n, d in (("one", one), ("three", three))}
            v = h.post("/v1/verify/json", json={"a": {"data": b64["three"]},
                                                "b": {"data": b64["one"]}}).json()
            assert (v["face_a"], v["face_b"]) == ("FACE_OUTCOME_NOT_FOUND", "FACE_OUTCOME_FOUND")
            hits = h.post("/v1/search/batch", json={"queries": [
                {"query": {"data": b64["one"]}, "k": 1},
                {"query": {"key": key}, "k": 1}]}).json()["results"]
            assert [x["query_face"] for x in hits] == ["FACE_OUTCOME_FOUND",
                                                       "FACE_OUTCOME_UNSPECIFIED"]
            e = h.post("/v1/embed", json={"images": [{"data": b64["three"]}]}).json()
            assert e["faces"] == ["FACE_OUTCOME_NOT_FOUND"]
    finally:
        served.server.stop(0)
    plain = ImagePipeline(Embedder.from_checkpoint(tiny_checkpoint))  # no face step
    try:
        assert plain.face_batcher is None and plain.embed_faces([three]).faces == [None]
    finally:
        plain.close()


def test_a_request_larger_than_the_pixel_budget_still_goes_through(
        tiny_checkpoint, digits_dir, tmp_path, faces_in_all_but_threes):
    """Decoded images wait for the face step within a budget of 4 x max_pixels: a request of
    more images than that fits is answered (each image frees its share once its face step is
    done), and every pixel is given back, also after a bad image."""
    import time

    ckpt = face_checkpoint(tiny_checkpoint, tmp_path / "face.pt", "fallback")
    p = ImagePipeline(Embedder.from_checkpoint(ckpt), max_pixels=32 * 32)  # 4 digits' worth
    files = [digit(digits_dir, str(d % 10), d // 10) for d in range(12)]
    try:
        got = p.embed_faces([f.read_bytes() for f in files], deadline=time.monotonic() + 60)
        assert got.faces == [not f.parent.name == "3" for f in files]
        assert got.vectors.shape == (12, p.embedder.dim) and p._budget.used == 0
        with pytest.raises(InvalidInput, match="image 5: cannot decode image"):
            p.embed_faces([f.read_bytes() for f in files[:5]] + [b"not an image"],
                          names=[f"image {i}" for i in range(6)])
        deadline = time.monotonic() + 10
        while p._budget.used and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p._budget.used == 0
    finally:
        p.close()


def test_require_skips_faceless_images_when_indexing_and_refuses_them_in_queries(
        tiny_checkpoint, digits_dir, tmp_path, faces_in_all_but_threes, caplog):
    ckpt = face_checkpoint(tiny_checkpoint, tmp_path / "face.pt", "require")
    with caplog.at_level(logging.WARNING):
        _build(ckpt, digits_dir, tmp_path)
    assert load_index_version(tmp_path / "idx").manifest.count == 400 - 40  # the 3s are not indexed
    assert "40 of 400 images have no face and are left out of the index" in caplog.text
    assert "no face found in " + str(digit(digits_dir, "3")) in caplog.text
    with open_catalog(f"sqlite:///{tmp_path / 'cat.db'}")() as s:
        assert len(all_images(s)) == 400  # catalogued: another model may index them
    core = _core(ckpt, tmp_path, face="require")  # --face agrees with the checkpoint
    three = digit(digits_dir, "3").read_bytes()
    try:
        with pytest.raises(InvalidInput, match="no face found"):
            core.search(ImageInput(data=three))
        with pytest.raises(InvalidInput, match="no face found"):
            core.verify(ImageInput(data=three), ImageInput(data=digit(digits_dir, "1").read_bytes()))
        with pytest.raises(InvalidInput, match="no face found"):  # catalogued, not indexed
            core.search(ImageInput(key=f"3/{digit(digits_dir, '3').stem}"))
        before = core.describe().count
        with pytest.raises(InvalidInput, match="'new/3'\\): no face found"):
            core.upsert([UpsertItem("new/1", digit(digits_dir, "1", 1).read_bytes()),
                         UpsertItem("new/3", three)])
        assert core.describe().count == before  # all or nothing: the 1 is not stored either
        assert core.search(ImageInput(data=digit(digits_dir, "1").read_bytes()), k=1).hits
        server = Server(ServeConfig(checkpoint=str(ckpt), index_root=str(tmp_path / "idx"),
                                    catalog_url=f"sqlite:///{tmp_path / 'cat.db'}", port=0),
                        core=core)
        try:  # over the wire
            with SimilarityClient(f"127.0.0.1:{server.port}") as c:
                with pytest.raises(grpc.RpcError) as e:
                    c.search(digit(digits_dir, "3"), 2)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "no face found" in e.value.details()
        finally:
            server.stop(grace=5)
    finally:
        core.close()
    with pytest.raises(ValueError, match="--face fallback contradicts the checkpoint"):
        load_core(ServeConfig(checkpoint=str(ckpt), index_root=str(tmp_path / "idx"),
                              catalog_url=f"sqlite:///{tmp_path / 'cat.db'}", face="fallback"))
    # reindex gets the same preprocessing: the same 360 vectors
    built = load_index_version(tmp_path / "idx").manifest.version
    rx.reindex(rx.ReindexConfig(checkpoint=str(ckpt), index_root=str(tmp_path / "idx"),
                                catalog_url=f"sqlite:///{tmp_path / 'cat.db'}", factory="Flat",
                                num_workers=0, progress=False, chunk_size=64))
    reindexed = load_index_version(tmp_path / "idx").manifest
    assert reindexed.version != built and reindexed.count == 360


def test_serve_face_is_refused_when_it_contradicts_the_checkpoint(embedder):
    plain = embedder.spec
    assert check_face_matches_spec("off", plain) == "off"  # default: as the checkpoint says
    with pytest.raises(ValueError, match="imgsim checkpoint set-face CKPT --face haar-crop "
                                         "--on-miss require"):
        check_face_matches_spec("require", plain)
    crop = replace(plain, face_align="haar-crop", face_on_miss="require")
    assert check_face_matches_spec("require", crop) == "require"
    with pytest.raises(ValueError, match="face step is haar-crop \\(no face: require\\)"):
        check_face_matches_spec("fallback", crop)
    dlib = replace(plain, face_align="dlib5")  # an imported dlib checkpoint: fallback
    assert check_face_matches_spec("fallback", dlib) == "fallback"
    with pytest.raises(ValueError, match="--face dlib5 --on-miss require"):
        check_face_matches_spec("require", dlib)
    with pytest.raises(ValueError, match="valid: off, require, fallback"):
        check_face_mode("maybe")
    with pytest.raises(ValueError, match="contradicts the checkpoint"):
        ImagePipeline(embedder, face="fallback")


def test_an_old_checkpoint_without_a_face_step_embeds_the_whole_image(embedder, digits_dir):
    data = digit(digits_dir, "3").read_bytes()
    p = ImagePipeline(embedder)
    try:
        np.testing.assert_allclose(p.embed([data]), embedder.embed_paths([digit(digits_dir, "3")]),
                                   atol=1e-6)
    finally:
        p.close()


def test_a_model_that_aligns_faces_itself(embedder, digits_dir):
    """spec.face_align names an aligner: its 'no face' (face_on_miss = require) is a clear
    INVALID_ARGUMENT."""
    model = Embedder(embedder.model, replace(embedder.spec, face_align="haar5",
                                             face_on_miss="require"))

    model.face_step.find_many = lambda images: [None] * len(images)  # finds no face
    p = ImagePipeline(model, face="require")
    try:
        with pytest.raises(InvalidInput, match="no face found"):
            p.embed([digit(digits_dir, "3").read_bytes()])
    finally:
        p.close()


@pytest.mark.data
def test_lfw_photos_are_cropped_to_their_face_before_embedding(tiny_checkpoint, tmp_path,
                                                               embedder):
    root = shared_data("lfw") / "lfw-deepfunneled"
    person = sorted(p for p in root.iterdir() if p.is_dir())[0]
    photo = sorted(person.iterdir())[0]
    ckpt = face_checkpoint(tiny_checkpoint, tmp_path / "face.pt", "require")
    p = ImagePipeline(Embedder.from_checkpoint(ckpt), face="require")
    try:
        cropped = p.embed([photo.read_bytes()])
    finally:
        p.close()
    assert not np.allclose(cropped, embedder.embed_paths([photo]), atol=1e-3)
