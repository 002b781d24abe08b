"""The batched MTCNN detector and the mtcnn5 face step on real LFW photos: it finds faces,
small photos included, batches give the one-by-one boxes, and a face-less image is flagged
(fallback) or refused (require) and counted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_data
from training.face import FaceNotFoundError, get_face_aligner
from training.face.aligners import dlib_hog_detector
from training.face.mtcnn import MTCNN
from training.face.stages import FACE_STAGES

# every 997th photo of LFW deep-funneled (12 people), sorted by path
STRIDE, COUNT = 997, 12


@pytest.fixture(scope="module")
def lfw_photos() -> list[Image.Image]:
    root = shared_data("lfw") / "lfw-deepfunneled"
    paths = sorted(root.glob("*/*.jpg"))[::STRIDE][:COUNT]
    return [Image.open(p).convert("RGB") for p in paths]


@pytest.fixture(scope="module")
def mtcnn() -> MTCNN:
    return MTCNN()


def test_finds_the_face_in_every_lfw_photo_near_the_centre(lfw_photos, mtcnn):
    found = mtcnn([np.asarray(im) for im in lfw_photos])
    for d in found:
        assert len(d) >= 1
        k = int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))
        x0, t, r, b = d.boxes[k]  # the largest (a background face may score higher)
        assert 60 < (x0 + r) / 2 < 190 and 60 < (t + b) / 2 < 190  # LFW centres the face
        assert 50 < r - x0 < 200
        # landmarks: eyes above the nose above the mouth, inside the box
        eyes, nose, mouth = d.points[k, :2], d.points[k, 2], d.points[k, 3:]
        assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()
        assert (x0 <= d.points[k, :, 0]).all() and (d.points[k, :, 0] <= r).all()


def test_batch_gives_the_one_by_one_boxes(lfw_photos, mtcnn):
    rgbs = [np.asarray(im) for im in lfw_photos]
    # mixed sizes in one batch: each size is its own pyramid group
    rgbs[3] = np.asarray(lfw_photos[3].resize((96, 96), Image.BICUBIC))
    batch = mtcnn(rgbs)
    for rgb, d in zip(rgbs, batch, strict=True):
        one = mtcnn([rgb])[0]
        assert len(one) == len(d)
        np.testing.assert_allclose(one.boxes, d.boxes, atol=1e-2)
        np.testing.assert_allclose(one.points, d.points, atol=1e-2)


def test_64px_photos_found_where_one_hog_scale_misses(lfw_photos, mtcnn):
    small = [np.asarray(im.resize((64, 64), Image.BICUBIC)) for im in lfw_photos]
    pytest.importorskip("dlib", reason="the HOG comparison needs dlib-bin")
    single, upsampled = dlib_hog_detector(upsample=0), dlib_hog_detector(upsample=1)
    assert sum(bool(single(x)) for x in small) == 0  # a 64 px photo's face is under HOG's 80 px
    assert sum(bool(upsampled(x)) for x in small) >= 4
    # ours resizes every photo to a 128 px shorter side before its pyramid: it finds them all,
    # boxes back in the 64 px photo's frame
    found = mtcnn(small)
    assert all(len(d) for d in found)
    assert all(15 < d.boxes[0, 2] - d.boxes[0, 0] < 45 for d in found)


def test_aligner_chips_lfw_photos_and_flags_none(lfw_photos):
    aligner = get_face_aligner("mtcnn5")
    out = aligner.align_many(lfw_photos[:4])
    assert [found for _, found in out] == [True] * 4
    assert all(chip.size == (150, 150) for chip, _ in out)


def test_blank_image_is_flagged_with_fallback_and_refused_with_require():
    blank = Image.new("RGB", (200, 160), (120, 120, 120))
    before = FACE_STAGES.snapshot()[1]
    chip, found = get_face_aligner("mtcnn5", on_miss="fallback").align_many([blank])[0]
    assert not found and chip.size == (150, 150)  # the fixed LFW crop
    with pytest.raises(FaceNotFoundError):
        get_face_aligner("mtcnn5", on_miss="require")(blank)
    after = FACE_STAGES.snapshot()[1]
    assert after["fallback"] == before["fallback"] + 1
    assert after["refused"] == before["refused"] + 1


def test_a_face_too_small_for_the_first_pass_is_found_by_the_retry(lfw_photos):
    # 64 px LFW photos in the middle of a 400 px grey canvas: at the first pass's 128 px a face
    # is about 8 px, under P-Net's 12 px window; the 256 px second pass sees about 17 px
    first, both = MTCNN(retry_side=None), MTCNN()
    missed = found = 0
    for photo in lfw_photos:
        canvas = Image.new("RGB", (400, 400), (128, 128, 128))
        canvas.paste(photo.resize((64, 64), Image.BICUBIC), (168, 168))
        rgb = np.asarray(canvas)
        missed += not len(first([rgb])[0])
        d = both([rgb])[0]
        if len(d):
            x0, t, r, b = d.boxes[0]
            found += bool(168 <= (x0 + r) / 2 <= 232 and 168 <= (t + b) / 2 <= 232)
    assert missed >= 10 and found >= 10, (missed, found)


def test_capping_pnet_proposals_keeps_the_faces(lfw_photos):
    rgbs = [np.asarray(im) for im in lfw_photos]
    capped, every = MTCNN()(rgbs), MTCNN(pnet_top_k=None)(rgbs)
    for a, b in zip(capped, every, strict=True):
        assert len(a) and len(b)
        ka = int(np.argmax((a.boxes[:, 2] - a.boxes[:, 0]) * (a.boxes[:, 3] - a.boxes[:, 1])))
        kb = int(np.argmax((b.boxes[:, 2] - b.boxes[:, 0]) * (b.boxes[:, 3] - b.boxes[:, 1])))
        assert np.abs(a.boxes[ka] - b.boxes[kb]).max() < 0.15 * (b.boxes[kb, 2] - b.boxes[kb, 0])


def test_mtcnn_boxes_are_mapped_onto_dlib_hog_boxes(lfw_photos, mtcnn):
    """dlib's landmark model was trained on HOG's boxes: the mapped MTCNN box (from its box and
    its own 5 landmarks, fitted on View 1) overlaps HOG's closely, closer than fixed ratios."""
    pytest.importorskip("dlib", reason="the HOG boxes need dlib-bin")
    from training.face.aligners import MTCNN_TO_DLIB, dlib_box_of, fixed_ratio_box

    def iou(a, b):
        lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
        inter = np.prod(np.clip(rb - lt, 0, None))
        return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)

    hog = dlib_hog_detector(upsample=1)
    mapped, ratios = [], []
    for im, d in zip(lfw_photos, mtcnn([np.asarray(x) for x in lfw_photos]), strict=True):
        boxes = hog(np.asarray(im))
        if not boxes or not len(d):
            continue
        h = np.array(max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])), np.float64)
        k = int(np.argmax([iou(b.astype(np.float64), h) for b in d.boxes]))
        mapped.append(iou(dlib_box_of(d.boxes[k], d.points[k]), h))
        ratios.append(iou(fixed_ratio_box(d.boxes[k], MTCNN_TO_DLIB), h))
    assert len(mapped) >= 8
    assert np.mean(mapped) > 0.8 and np.mean(mapped) > np.mean(ratios)


def test_weights_come_from_the_installed_wheel_or_a_named_folder(tmp_path, monkeypatch):
    """MTCNN's weights are not in the repo: the facenet-pytorch wheel's data folder (installed
    without its dependencies), or IMGSIM_MTCNN_WEIGHTS; a folder without them is a clear error."""
    import shutil

    from training.face.mtcnn import WEIGHTS_ENV, weights_dir

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    wheel = weights_dir()
    assert wheel.parts[-2:] == ("facenet_pytorch", "data")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pnet.pt, rnet.pt, onet.pt not found in"):
        MTCNN()
    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        shutil.copy(wheel / name, tmp_path / name)
    assert weights_dir() == tmp_path and len(MTCNN()([np.zeros((64, 64, 3), np.uint8)])) == 1


def test_a_bigger_bystander_cut_by_the_frame_is_not_the_face_aligned():
    """Doug_Duncan_0001: MTCNN also finds a bystander at the bottom left, larger than the
    subject; taking the largest face aligned the bystander in colour and the subject in grey."""
    path = shared_data("lfw") / "lfw-deepfunneled" / "Doug_Duncan" / "Doug_Duncan_0001.jpg"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    d = MTCNN()([rgb])[0]
    areas = (d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])
    x0, t, r, b = d.boxes[int(np.argmax(areas))]
    assert len(d) >= 2 and (x0 + r) / 2 < 60  # the photo still shows what this test is about
    aligner = get_face_aligner("mtcnn5", on_miss="require")
    grey = np.asarray(Image.fromarray(rgb).convert("L").convert("RGB"))
    for img in (rgb, grey):
        x0, t, r, b = aligner.detect(img)[0]
        assert abs((x0 + r) / 2 - 125) < 20 and abs((t + b) / 2 - 125) < 25


def test_o_net_scores_distinct_faces_so_a_subject_behind_a_bystander_is_kept():
    """Elvis_Costello_0001 in grey: R-Net's best two boxes are both on the man at the right
    edge, so cutting to two without the distinct-face NMS loses the subject at the centre."""
    path = shared_data("lfw") / "lfw-deepfunneled" / "Elvis_Costello" / "Elvis_Costello_0001.jpg"
    grey = np.asarray(Image.open(path).convert("L").convert("RGB"))
    centres = lambda d: sorted(round((b[0] + b[2]) / 2) for b in d.boxes)  # noqa: E731
    pruned = MTCNN(distinct_iou=None)([grey])[0]
    assert len(pruned) == 1 and centres(pruned)[0] > 190  # only the bystander survives
    d = MTCNN()([grey])[0]
    assert len(d) == 2 and abs(centres(d)[0] - 125) < 20 and centres(d)[1] > 190
    x0, _, r, _ = get_face_aligner("mtcnn5", on_miss="require").detect(grey)[0]
    assert abs((x0 + r) / 2 - 125) < 20
