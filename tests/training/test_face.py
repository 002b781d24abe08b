"""Face preprocessing: similarity fit, dlib-compatible chips (parity with get_face_chip), aligners,
the Haar crop, the spec's face step in the transforms and `imgsim checkpoint set-face`."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import training.face.haar
from tests.conftest import shared_data
from training.data.transforms import eval_transform
from training.dlib.serialize import DlibWriter
from training.face import (
    FaceNotFoundError,
    FixedAligner,
    HaarCrop,
    LandmarkAligner,
    chip_to_image_affine,
    crop_main_face,
    detect_faces,
    extract_chip,
    face_chip,
    get_face_aligner,
    similarity_transform,
)
from training.face.aligners import LFW_DEEPFUNNELED_LANDMARKS, find_landmarks_file
from training.face.chips import face_chip_points
from training.face.landmarks import ShapePredictor
from training.face.main_face import main_face_first
from training.models.spec import ModelSpec


def _photo(h: int = 250, w: int = 250, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (h, w, 3) uint8: bilinear sampling is checkable on it."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.uniform(0, 255, (1, 3, 16, 16)).astype(np.float32))
    big = torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    return big.clamp(0, 255).round().byte()[0].permute(1, 2, 0).numpy().copy()


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, t = 0.3, 1.7, np.array([12.0, -4.0])
    m_true = scale * np.array([[math.cos(angle), -math.sin(angle)],
                               [math.sin(angle), math.cos(angle)]])
    m, tt = similarity_transform(src, src @ m_true.T + t)
    np.testing.assert_allclose(m, m_true, atol=1e-9)
    np.testing.assert_allclose(tt, t, atol=1e-9)
    with pytest.raises(ValueError):
        similarity_transform(src, src[:3])


def test_chip_affine_follows_dlibs_rectangle_convention():
    # Landmarks exactly at the template: scale 1, no rotation; dlib's centered_drect spans
    # size-1 pixels, so chip pixel (0, 0) samples image point (0.5, 0.5).
    a = chip_to_image_affine(face_chip_points(150, 0.25))
    np.testing.assert_allclose(a, [[1, 0, 0.5], [0, 1, 0.5]], atol=1e-9)


def test_extract_chip_interpolates_bilinearly_and_blacks_out_the_outside():
    ramp = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (100, 1))  # value = 2 * x
    a = np.array([[1.0, 0, 10.25], [0, 1.0, 5.0]])
    chip = extract_chip(ramp, a, size=8)
    np.testing.assert_array_equal(chip[0], np.floor(2 * (np.arange(8) + 10.25)).astype(np.uint8))
    outside = extract_chip(ramp, np.array([[1.0, 0, 95.5], [0, 1.0, 0]]), size=8)
    assert outside[:, 4:].max() == 0 and outside[:, :4].min() > 0  # x >= 99 has no right pixel


def _dlib_chip(img: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    dlib = pytest.importorskip("dlib", reason="dlib-bin (dev extra) is needed for parity tests")
    parts = [dlib.point(int(x), int(y)) for x, y in landmarks]
    det = dlib.full_object_detection(dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1), parts)
    return np.asarray(dlib.get_face_chip(img, det, size=150, padding=0.25))


@pytest.mark.parametrize("seed", range(4))
def test_chip_matches_dlib_get_face_chip(seed):
    rng = np.random.default_rng(seed)
    img = _photo(seed=seed)
    # the LFW mean landmarks, rotated, scaled and shifted (integer points, as dlib's are)
    angle, scale = rng.uniform(-0.4, 0.4), rng.uniform(0.6, 1.4)
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)],
                            [math.sin(angle), math.cos(angle)]])
    lm = (LFW_DEEPFUNNELED_LANDMARKS - 125) @ rot.T + 125 + rng.uniform(-40, 40, 2)
    lm = np.round(lm)
    ours = face_chip(img, lm).astype(int)
    ref = _dlib_chip(img, lm).astype(int)
    assert ours.shape == ref.shape == (150, 150, 3)
    assert np.abs(ours - ref).max() <= 2  # "within a few grey levels"; in practice 0
    assert (ours == 0).all(-1).mean() == pytest.approx((ref == 0).all(-1).mean(), abs=0.01)


def test_fixed_aligner_scales_its_landmarks_with_the_image():
    img = _photo()
    chip = FixedAligner()(Image.fromarray(img))
    assert chip.size == (150, 150)
    np.testing.assert_array_equal(np.asarray(chip), face_chip(img, LFW_DEEPFUNNELED_LANDMARKS))
    half = FixedAligner().landmarks_for(125, 125)
    np.testing.assert_allclose(half, LFW_DEEPFUNNELED_LANDMARKS / 2)


def test_unknown_aligner_lists_the_valid_names():
    with pytest.raises(ValueError, match="dlib5, haar-crop, haar5, lfw-fixed"):
        get_face_aligner("mtcnn")


def _write_predictor(path, seed: int = 0, parts: int = 5, cascades: int = 3, trees: int = 4,
                     depth: int = 3, pixels: int = 12) -> None:
    """A small random shape predictor in dlib's format (same layout as the 5-point model)."""
    rng = np.random.default_rng(seed)
    w = DlibWriter()
    w.int(1)
    w.float_matrix(rng.uniform(0.2, 0.8, (2 * parts, 1)))
    n_splits = 2 ** depth - 1
    w.uint(cascades)
    for _ in range(cascades):
        w.uint(trees)
        for _ in range(trees):
            w.uint(n_splits)
            for _ in range(n_splits):
                w.uint(int(rng.integers(pixels)))
                w.uint(int(rng.integers(pixels)))
                w.float(float(rng.normal(0, 25)))
            w.uint(n_splits + 1)
            for _ in range(n_splits + 1):
                w.float_matrix(rng.normal(0, 0.03, (2 * parts, 1)))
    w.uint(cascades)
    for _ in range(cascades):
        w.uint(pixels)
        for _ in range(pixels):
            w.uint(int(rng.integers(parts)))
    w.uint(cascades)
    for _ in range(cascades):
        w.uint(pixels)
        for _ in range(pixels):
            w.float(float(rng.normal(0, 0.15)))
            w.float(float(rng.normal(0, 0.15)))
    path.write_bytes(w.getvalue())


def test_shape_predictor_port_matches_dlib_on_a_written_model(tmp_path):
    dlib = pytest.importorskip("dlib", reason="dlib-bin (dev extra) is needed for parity tests")
    path = tmp_path / "sp.dat"
    _write_predictor(path)
    ours, theirs = ShapePredictor.from_file(path), dlib.shape_predictor(str(path))
    img = _photo(seed=5)
    for box in [(60, 50, 190, 180), (-20, 10, 120, 160), (100, 120, 260, 270)]:
        expected = np.array([[p.x, p.y] for p in theirs(img, dlib.rectangle(*box)).parts()])
        np.testing.assert_array_equal(ours(img, box), expected)
    # the batched call: mixed sizes, a grey image, boxes partly outside, all in one
    grey = np.asarray(Image.fromarray(_photo(h=200, w=300, seed=6)).convert("L"))
    images = [img, grey, img[:180, :220]]
    boxes = [(60, 50, 190, 180), (40, 30, 200, 190), (-20, 10, 120, 160)]
    for got, im, box in zip(ours.many(images, boxes), images, boxes, strict=True):
        expected = np.array([[p.x, p.y] for p in theirs(im, dlib.rectangle(*box)).parts()])
        np.testing.assert_array_equal(got, expected)
    cache = tmp_path / "cache"
    cached = ShapePredictor.load(path, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1
    again = ShapePredictor.load(path, cache_dir=cache)  # from the .npz this time
    np.testing.assert_array_equal(again(img, (60, 50, 190, 180)), cached(img, (60, 50, 190, 180)))


def test_face_align_travels_with_the_spec_into_the_eval_transform():
    spec = ModelSpec(arch="dlib_resnet", embedding_dim=128, input_size=150, metric="euclidean",
                     mean=(0.48, 0.46, 0.41), std=(256 / 255,) * 3, face_align="lfw-fixed")
    img = Image.fromarray(_photo())
    x = eval_transform(spec)(img)
    chip = face_chip(np.asarray(img), LFW_DEEPFUNNELED_LANDMARKS).astype(np.float32)
    expected = (chip / 255 - np.array(spec.mean, np.float32)) / np.float32(256 / 255)
    np.testing.assert_allclose(x.numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    plain = eval_transform(replace(spec, face_align=None))(img)
    assert not torch.allclose(plain, x)  # without the step: a resized whole image


def _lfw_image() -> np.ndarray:
    root = shared_data("lfw") / "lfw-deepfunneled"
    return np.asarray(Image.open(root / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg").convert("RGB"))


def test_landmark_aligner_on_an_lfw_face_matches_dlibs_pipeline():
    pytest.importorskip("dlib", reason="dlib-bin (dev extra) is needed for detection")
    try:
        find_landmarks_file()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    img = _lfw_image()
    aligner = LandmarkAligner(fallback=False)
    boxes = aligner.detect(img)
    assert boxes, "dlib's detector finds the face"
    lm = aligner.landmarks(img, boxes[0])
    import dlib

    ref = dlib.shape_predictor(str(find_landmarks_file()))(img, dlib.rectangle(*boxes[0]))
    assert np.abs(lm - [[p.x, p.y] for p in ref.parts()]).max() <= 1  # our numpy port
    # deep-funneled faces sit where the mean landmarks say (within a few pixels)
    assert np.abs(lm - LFW_DEEPFUNNELED_LANDMARKS).max() < 25
    haar = LandmarkAligner(detector="haar", fallback=False)
    assert np.abs(haar.landmarks(img, haar.detect(img)[0]) - lm).max() < 8
    chip = np.asarray(aligner(Image.fromarray(img))).astype(int)
    assert np.abs(chip - _dlib_chip(img, lm).astype(int)).max() <= 2


def test_landmark_aligner_without_a_face_raises_or_falls_back():
    pytest.importorskip("dlib", reason="dlib-bin (dev extra) is needed for detection")
    try:
        find_landmarks_file()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from training.face import FaceNotFoundError

    blank = Image.fromarray(np.full((120, 120, 3), 128, np.uint8))
    with pytest.raises(FaceNotFoundError):
        LandmarkAligner(fallback=False)(blank)
    assert LandmarkAligner(fallback=True)(blank).size == (150, 150)


SIDE = (0, 70, 110, 180)  # a bystander cut by the frame: 110 px, centre 70 px left of the middle
CENTRAL = (75, 75, 175, 175)  # the subject: 100 px, in the middle of a 250 x 250 photo


def test_the_main_face_is_the_largest_less_twice_its_squared_distance_from_the_centre():
    assert main_face_first([SIDE, CENTRAL], 250, 250) == [CENTRAL, SIDE]  # 10000 vs 12100 - 9800
    big = (0, 0, 200, 200)  # a close-up 25 px off centre on each axis: 40000 - 2500 wins
    assert main_face_first([CENTRAL, big], 250, 250) == [big, CENTRAL]
    twice = [tuple(2 * v for v in b) for b in (SIDE, CENTRAL)]
    assert main_face_first(twice, 500, 500) == twice[::-1]  # the same order at any scale
    assert main_face_first([SIDE, CENTRAL], 250, 500)[0] == CENTRAL  # the centre is (125, 250)
    assert main_face_first([], 250, 250) == []


def test_every_face_step_takes_the_main_face(monkeypatch):
    aligner = LandmarkAligner(detector="mtcnn")
    aligner._detect, aligner._predictor = (lambda rgb: [SIDE, CENTRAL]), object()
    assert aligner.detect(np.zeros((250, 250, 3), np.uint8)) == [CENTRAL, SIDE]

    class Cascade:
        def detectMultiScale(self, *args, **kwargs):
            return np.array([[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in (SIDE, CENTRAL)])

    monkeypatch.setattr(training.face.haar, "_cascade", lambda: Cascade())
    assert detect_faces(Image.new("RGB", (250, 250))) == [(75, 75, 100, 100), (0, 70, 110, 110)]
    assert crop_main_face(Image.new("RGB", (250, 250)), margin=0.25).size == (150, 150)


def test_haar_crop_is_the_main_detection_with_a_margin(monkeypatch):
    img = Image.new("RGB", (200, 100))
    monkeypatch.setattr(training.face.haar, "detect_faces",
                        lambda im: [(50, 20, 40, 40), (0, 0, 10, 10)])
    assert crop_main_face(img, margin=0.25).size == (60, 60)  # 40 + 2 * 10 margin
    assert HaarCrop()(img).size == (60, 60)
    monkeypatch.setattr(training.face.haar, "detect_faces", lambda im: [(180, 80, 40, 40)])
    assert crop_main_face(img, margin=0.25).size == (30, 30)  # clipped at the border
    monkeypatch.setattr(training.face.haar, "detect_faces", lambda im: [])
    assert HaarCrop()(img) is img  # fallback: the whole image
    with pytest.raises(FaceNotFoundError, match="no face found"):
        HaarCrop(fallback=False)(img)


def test_the_specs_face_step_and_on_miss_are_in_the_eval_transform(monkeypatch):
    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=32, face_align="haar-crop")
    img = Image.fromarray(_photo(100, 200))
    monkeypatch.setattr(training.face.haar, "detect_faces", lambda im: [(120, 30, 40, 40)])
    cropped = eval_transform(spec)(img)
    expected = eval_transform(replace(spec, face_align=None))(img.crop((110, 20, 170, 80)))
    torch.testing.assert_close(cropped, expected)
    monkeypatch.setattr(training.face.haar, "detect_faces", lambda im: [])
    whole = eval_transform(replace(spec, face_align=None))(img)
    torch.testing.assert_close(eval_transform(spec)(img), whole)  # fallback (the default)
    required = replace(spec, face_on_miss="require")
    assert required.requires_face and not spec.requires_face
    with pytest.raises(FaceNotFoundError):
        eval_transform(required)(img)
    from training.data.transforms import face_transform

    assert face_transform(required)(img).shape == (3, 32, 32)  # training: always the fallback
    with pytest.raises(ValueError, match="face_on_miss must be one of"):
        replace(spec, face_on_miss="sometimes")


def test_a_spec_without_face_on_miss_loads_as_fallback():
    old = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=32, face_align="dlib5").to_dict()
    del old["face_on_miss"]  # a checkpoint written before the field existed
    spec = ModelSpec.from_dict(old)
    assert spec.face_on_miss == "fallback" and spec.face_step() == "dlib5 (no face: fallback)"
    assert replace(spec, face_align=None).face_step() == "off"


def test_checkpoint_set_face_attaches_the_haar_crop(tmp_path, tiny_checkpoint, capsys):
    from imgsim.cli import main as imgsim_main
    from training.checkpoint import load_checkpoint

    out = tmp_path / "face.pt"
    assert imgsim_main(["checkpoint", "set-face", str(tiny_checkpoint), "--face", "haar-crop",
                        "--on-miss", "require", "--output", str(out)]) == 0
    assert "face step haar-crop (no face: require) (was off)" in capsys.readouterr().out
    before, after = load_checkpoint(tiny_checkpoint), load_checkpoint(out)
    assert (after.spec.face_align, after.spec.face_on_miss) == ("haar-crop", "require")
    assert replace(after.spec, face_align=None, face_on_miss="fallback") == before.spec
    assert all(torch.equal(after.state_dict[k], v) for k, v in before.state_dict.items())
    assert imgsim_main(["checkpoint", "set-face", str(out), "--face", "none"]) == 0  # in place
    assert load_checkpoint(out).spec.face_align is None
    assert imgsim_main(["checkpoint", "set-face", str(out)]) == 2
    assert "give --face, --on-miss or both" in capsys.readouterr().err


@pytest.mark.data
def test_haar_finds_the_faces_of_lfw_photos():
    root = shared_data("lfw") / "lfw-deepfunneled"
    people = sorted(p for p in root.iterdir() if p.is_dir())[:5]
    found = 0
    for person in people:
        img = Image.open(sorted(person.iterdir())[0])
        boxes = detect_faces(img)
        if boxes:
            found += 1
            x, y, w, h = boxes[0]  # deep-funneled LFW centres the face
            assert abs(x + w / 2 - img.width / 2) < 0.2 * img.width
            assert abs(y + h / 2 - img.height / 2) < 0.2 * img.height
            face = crop_main_face(img)
            assert face.width < img.width and face.height < img.height
    assert found >= 4
