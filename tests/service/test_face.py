"""Face pipeline: crop the largest face before embedding; a clear error when there is none."""

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidInput
from service.face import check_face_mode, crop_largest_face, detect_faces
from service.images import ImagePipeline
from tests.conftest import shared_data
from tests.service.conftest import digit
from training.models.embedder import Embedder


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
    return Embedder.from_checkpoint(tiny_checkpoint)


def lfw_image(i=0):
    root = shared_data("lfw") / "lfw-deepfunneled"
    person = sorted(p for p in root.iterdir() if p.is_dir())[i]
    return sorted(person.iterdir())[0]


def test_no_face_is_an_error_when_required_and_the_whole_image_otherwise(embedder, digits_dir):
    data = digit(digits_dir, "3").read_bytes()
    req = ImagePipeline(embedder, face="require")
    fb = ImagePipeline(embedder, face="fallback")
    off = ImagePipeline(embedder, face="off")
    try:
        with pytest.raises(InvalidInput, match="no face found"):
            req.embed([data], names=["image a"])
        assert np.allclose(fb.embed([data]), off.embed([data]), atol=1e-6)
    finally:
        for p in (req, fb, off):
            p.close()
    with pytest.raises(ValueError, match="valid: off, require, fallback"):
        check_face_mode("maybe")


@pytest.mark.data
def test_faces_in_lfw_photos_are_found_and_cropped(embedder):
    found = 0
    for i in range(5):
        img = Image.open(lfw_image(i))
        boxes = detect_faces(img)
        if boxes:
            found += 1
            x, y, w, h = boxes[0]  # deep-funneled LFW centres the face
            assert abs(x + w / 2 - img.width / 2) < 0.2 * img.width
            assert abs(y + h / 2 - img.height / 2) < 0.2 * img.height
            face = crop_largest_face(img)
            assert face.width < img.width and face.height < img.height
    assert found >= 4
    data = lfw_image(0).read_bytes()
    req, off = ImagePipeline(embedder, face="require"), ImagePipeline(embedder, face="off")
    try:
        cropped, whole = req.embed([data]), off.embed([data])
        assert not np.allclose(cropped, whole, atol=1e-3)  # the crop is what was embedded
    finally:
        req.close()
        off.close()


def test_face_crop_box_is_the_largest_detection(monkeypatch):
    import service.face

    img = Image.new("RGB", (200, 100))
    monkeypatch.setattr(service.face, "detect_faces", lambda im: [(50, 20, 40, 40), (0, 0, 10, 10)])
    face = crop_largest_face(img, margin=0.25)
    assert face.size == (60, 60)  # 40 + 2 * 10 margin
    monkeypatch.setattr(service.face, "detect_faces", lambda im: [(180, 80, 40, 40)])
    assert crop_largest_face(img, margin=0.25).size == (30, 30)  # clipped at the border


def test_a_model_that_aligns_faces_itself(embedder, digits_dir, monkeypatch):
    """spec.face_align: the model's transform detects and aligns; its 'no face' is a clear
    INVALID_ARGUMENT, and face=require refuses an image before the model sees it."""
    from dataclasses import replace

    import service.images
    from training.face import FaceNotFoundError

    data = digit(digits_dir, "3").read_bytes()
    model = Embedder(embedder.model, replace(embedder.spec, face_align="haar5"))

    def aligner_finds_nothing(img):
        raise FaceNotFoundError("no face found in the image")

    model.pixels = aligner_finds_nothing  # the pipeline's preprocessing (uint8 pixels)
    p = ImagePipeline(model, face="off")
    try:
        with pytest.raises(InvalidInput, match="no face found"):
            p.embed([data])
    finally:
        p.close()
    seen = []
    model.pixels = lambda img: seen.append(img) or embedder.pixels(img)
    monkeypatch.setattr(service.images, "detect_faces", lambda img: [])
    p = ImagePipeline(model, face="require")
    try:
        with pytest.raises(InvalidInput, match="no face found"):
            p.embed([data])
        assert seen == []  # refused before the model's transform ran
    finally:
        p.close()
    monkeypatch.setattr(service.images, "detect_faces", lambda img: [(0, 0, 8, 8)])
    p = ImagePipeline(model, face="require")
    try:
        assert p.embed([data]).shape == (1, embedder.dim)
        assert seen[0].size == (32, 32)  # the whole image: the model aligns, not the service
    finally:
        p.close()
