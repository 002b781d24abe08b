"""Face aligners: PIL image -> aligned face chip, by detected 5-point landmarks or a fixed crop."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from training.dlib.paths import models_dir
from training.face.chips import face_chip
from training.face.haar import FaceNotFoundError, HaarCrop, check_on_miss, chips_or_fallback
from training.face.landmarks import ShapePredictor
from training.face.main_face import main_face_first
from training.face.stages import FACE_STAGES
from training.models.spec import DETECTING_FACE_STEPS

log = logging.getLogger(__name__)

LANDMARKS_ENV = "IMGSIM_DLIB_LANDMARKS"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
# Mean of dlib's 5 landmarks (HOG detector, upsampled once; 1,018 images, every 13th of
# LFW deep-funneled, the face nearest the centre; 3 had none), in their 250x250 frame.
LFW_DEEPFUNNELED_LANDMARKS = np.array([
    [153.45, 112.60],
    [137.41, 113.34],
    [96.46, 113.79],
    [112.66, 113.80],
    [125.99, 144.65],
])
LFW_FRAME = 250


def find_landmarks_file(path: str | Path | None = None) -> Path:
    """The 5-point landmark model: ``path``, $IMGSIM_DLIB_LANDMARKS, or face_recognition_models'."""
    candidates = [path, os.environ.get(LANDMARKS_ENV)]
    mdir = models_dir()
    if mdir is not None:
        candidates.append(mdir / LANDMARKS_FILE)
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise FileNotFoundError(
        f"{LANDMARKS_FILE} not found: install the face extra (pip install 'imgsim[face]', which "
        f"brings face_recognition_models and dlib-bin) or set {LANDMARKS_ENV}")


def _import_dlib():
    try:
        import dlib
    except ImportError as e:
        raise ImportError("face detection needs dlib-bin: pip install 'imgsim[face]'") from e
    return dlib


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


class FixedAligner:
    """A fixed crop for pre-aligned images (LFW deep-funneled): the chip dlib's alignment gives
    on average, applied without detection. Images of another size are scaled to 250x250 first.

    __call__: PIL image -> (size x size) RGB PIL image."""

    def __init__(self, *, size: int = 150, padding: float = 0.25,
                 landmarks: np.ndarray = LFW_DEEPFUNNELED_LANDMARKS,
                 frame: int = LFW_FRAME) -> None:
        self.size, self.padding = size, padding
        self.landmarks, self.frame = np.asarray(landmarks, np.float64), frame

    def landmarks_for(self, width: int, height: int) -> np.ndarray:
        """(5, 2) landmarks scaled to an image of this size."""
        return self.landmarks * np.array([width / self.frame, height / self.frame])

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = _rgb(image)
        lm = self.landmarks_for(rgb.shape[1], rgb.shape[0])
        return Image.fromarray(face_chip(rgb, lm, size=self.size, padding=self.padding))


def dlib_hog_detector(upsample: int = 1):
    """dlib's HOG frontal face detector (dlib-bin): rgb (H, W, 3) uint8 -> [(l, t, r, b)]."""
    detector = _import_dlib().get_frontal_face_detector()

    def detect(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        return [(r.left(), r.top(), r.right(), r.bottom()) for r in detector(rgb, upsample)]

    return detect


# OpenCV's Haar box -> the box dlib's HOG detector draws around the same face (medians over
# 130 LFW faces both found): centre shifted by (-0.034 w, +0.072 h), sides scaled by 0.92.
# The landmark model was trained on dlib's boxes, so it wants boxes placed like them.
HAAR_TO_DLIB = (-0.034, 0.072, 0.92)


def haar_detector(min_size: int = 40):
    """OpenCV's frontal-face Haar cascade (ships inside opencv-python-headless), boxes mapped
    onto dlib's HOG box geometry: rgb (H, W, 3) uint8 -> [(l, t, r, b)]."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    dx, dy, s = HAAR_TO_DLIB

    def detect(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        boxes = []
        for x, y, w, h in cascade.detectMultiScale(gray, 1.1, 5, minSize=(min_size, min_size)):
            cx, cy, hw, hh = x + w / 2 + dx * w, y + h / 2 + dy * h, s * w / 2, s * h / 2
            boxes.append((round(cx - hw), round(cy - hh), round(cx + hw), round(cy + hh)))
        return boxes

    return detect


# An MTCNN box -> the box dlib's HOG detector (upsample 1) draws around the same face (medians
# over 158 LFW faces both found, MTCNN at side 128): centre shifted by (-0.043 w, +0.039 h),
# width scaled by 1.161 and height by 0.854 (MTCNN's boxes are taller and narrower).
MTCNN_TO_DLIB = (-0.043, 0.039, 1.161, 0.854)


def fixed_ratio_box(box: np.ndarray, ratios=MTCNN_TO_DLIB) -> np.ndarray:
    """The MTCNN box moved and scaled by fixed ratios (centre shift, width and height scale)."""
    dx, dy, sx, sy = ratios
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2 + dx * w, (box[1] + box[3]) / 2 + dy * h
    return np.array([cx - sx * w / 2, cy - sy * h / 2, cx + sx * w / 2, cy + sy * h / 2])


def box_features(box: np.ndarray, points: np.ndarray) -> np.ndarray:
    """What predicts dlib's box from an MTCNN detection: its 5 landmarks relative to its box
    (centre, in box widths and heights), the box's log aspect ratio, and a constant."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rel = (np.asarray(points, np.float64) - [cx, cy]) / [w, h]
    return np.concatenate([rel.ravel(), [np.log(h / w), 1.0]])


# An MTCNN detection (box and its own 5 landmarks) -> dlib's HOG box, least squares on LFW
# View 1's training photos where both detectors found the face (benchmarks/calibrate_mtcnn_box.py,
# 3,351 photos; View 2 never seen): rows give the centre shift (in box widths, heights) and the
# log width and height scales from box_features. On View 1's test photos (1,505) its boxes
# overlap HOG's at mean IoU 0.866 (fixed ratios: 0.810) and dlib's landmarks fitted in them lie
# 22% closer to those fitted in HOG's own box (0.0059 vs 0.0076 of the eye span).
MTCNN_BOX_TO_DLIB = np.array([
    [2.13199e-01, 3.34658e-03, 1.01901e-01, 1.30305e-02, 2.26844e-01, -5.25494e-03,
     1.29659e-01, 2.91765e-03, 6.15987e-02, 4.15627e-03, -7.06358e-03, -5.50278e-03],
    [-5.55952e-02, 1.22520e-01, 3.69740e-02, 1.12961e-01, 1.48174e-02, 1.69559e-01,
     -3.60404e-02, 6.07104e-02, 4.49348e-02, 5.32080e-02, -5.56827e-02, -3.38770e-03],
    [-2.23869e-04, -4.70643e-02, 6.85969e-02, -4.86933e-02, 8.26074e-03, -3.66115e-02,
     -5.25272e-02, 4.68664e-02, -1.46670e-02, 4.60220e-02, 3.02932e-01, -6.92602e-03],
    [1.78963e-02, -7.57771e-02, 4.61368e-02, -9.66078e-02, -1.42248e-02, -4.60918e-02,
     -2.29597e-02, 5.65574e-02, -3.30298e-03, 4.24714e-02, -4.37482e-01, -8.51719e-02]])


def dlib_box_of(box: np.ndarray, points: np.ndarray,
                coef: np.ndarray = MTCNN_BOX_TO_DLIB) -> np.ndarray:
    """The box dlib's HOG detector would draw around the face MTCNN found (l, t, r, b)."""
    dx, dy, lw, lh = coef @ box_features(box, points)
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2 + dx * w, (box[1] + box[3]) / 2 + dy * h
    hw, hh = np.exp(lw) * w / 2, np.exp(lh) * h / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh])


def _to_dlib_box(box: np.ndarray, points: np.ndarray) -> tuple[int, int, int, int]:
    return tuple(int(round(float(v))) for v in dlib_box_of(box, points))  # type: ignore[return-value]


def mtcnn_detector(side: int | None = 128):
    """MTCNN (training.face.mtcnn, weights from the facenet-pytorch wheel), boxes mapped onto dlib's HOG
    box geometry. ``detect(rgb)`` -> [(l, t, r, b)]; ``detect.many(list of rgb)`` -> a list of
    those per image, in one batch."""
    from training.face.mtcnn import MTCNN

    net = MTCNN(side=side)

    def many(images: list[np.ndarray]) -> list[list[tuple[int, int, int, int]]]:
        return [[_to_dlib_box(b, p) for b, p in zip(d.boxes, d.points, strict=True)]
                for d in net(images)]

    def detect(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        return many([rgb])[0]

    detect.many = many
    return detect


DETECTORS = {"dlib-hog": dlib_hog_detector, "haar": haar_detector, "mtcnn": mtcnn_detector}


class LandmarkAligner:
    """Detect the photo's main face (by area, less a penalty for distance from the centre:
    :func:`main_face_first`), find its 5 landmarks with our numpy port of dlib's 5-point
    shape predictor, and cut dlib's face chip with our own similarity alignment and sampling.

    ``detector``: "mtcnn" (batched MTCNN, every image resized to a 128 px shorter side first,
    so small photos are upsampled; boxes mapped to dlib's geometry), "dlib-hog" (dlib's HOG
    detector, upsampled once, needs dlib-bin) or "haar" (OpenCV's Haar cascade, boxes mapped
    to dlib's geometry). When no face is found: fall back to the fixed LFW crop if
    ``fallback`` is True (counted in FACE_STAGES.misses["fallback"] and flagged by
    :meth:`align_many`), else raise FaceNotFoundError (counted as "refused"; the service
    answers INVALID_ARGUMENT). __call__: PIL image -> PIL chip.
    """

    def __init__(self, *, size: int = 150, padding: float = 0.25, detector: str = "dlib-hog",
                 landmarks_path: str | Path | None = None, fallback: bool = True) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"unknown face detector {detector!r}; valid: "
                             f"{', '.join(sorted(DETECTORS))}")
        self.size, self.padding, self.detector, self.fallback = size, padding, detector, fallback
        self.landmarks_path = landmarks_path
        self._detect = self._predictor = None
        self._fixed = FixedAligner(size=size, padding=padding)

    def __getstate__(self) -> dict:  # detectors do not pickle: DataLoader workers reload them
        state = dict(self.__dict__)
        state["_detect"] = state["_predictor"] = None
        return state

    def _load(self) -> None:
        if self._detect is None:
            self._predictor = ShapePredictor.load(find_landmarks_file(self.landmarks_path))
            self._detect = DETECTORS[self.detector]()

    def detect(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes (left, top, right, bottom), the photo's subject first
        (:func:`main_face_first`). rgb: (H, W, 3) uint8."""
        return self.detect_many([rgb])[0]

    def detect_many(self, images: list[np.ndarray]) -> list[list[tuple[int, int, int, int]]]:
        """:meth:`detect` of each image, in one batch where the detector batches (mtcnn)."""
        self._load()
        with FACE_STAGES.timed("detect", len(images)):
            many = getattr(self._detect, "many", None)
            found = many(images) if many else [self._detect(rgb) for rgb in images]
        return [main_face_first(b, rgb.shape[1], rgb.shape[0])
                for b, rgb in zip(found, images, strict=True)]

    def landmarks(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The 5 landmarks inside ``box``: (5, 2) float64 (x, y), dlib's order."""
        self._load()
        return self._predictor(rgb, box)

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.align_many([image])[0][0]

    def find_many(self, images: list[Image.Image]) -> list[Image.Image | None]:
        """The aligned chip of each image's main face, None where no face was found;
        detection and landmarks each run once for the whole batch. Counts no misses: the
        caller decides what a miss does (:meth:`align_many`, ``Embedder.face_pixels``)."""
        rgbs = [_rgb(im) for im in images]
        found = self.detect_many(rgbs)
        hits = [k for k, boxes in enumerate(found) if boxes]
        out: list[Image.Image | None] = [None] * len(images)
        with FACE_STAGES.timed("align", len(hits)):
            marks = self._predictor.many([rgbs[k] for k in hits], [found[k][0] for k in hits])
            for k, lm in zip(hits, marks, strict=True):
                out[k] = Image.fromarray(face_chip(rgbs[k], lm, size=self.size,
                                                   padding=self.padding))
        return out

    def fallback_for(self, image: Image.Image) -> Image.Image:
        """What is embedded for an image without a face (with ``fallback``): the fixed crop."""
        return self._fixed(image)

    def align_many(self, images: list[Image.Image]) -> list[tuple[Image.Image, bool]]:
        """(chip, found) per image, detected in one batch. found False: no face, the chip is
        the fixed-crop fallback (with ``fallback``; else FaceNotFoundError is raised)."""
        out = chips_or_fallback(self, images)
        if any(chip is None for chip, _ in out):
            raise FaceNotFoundError("no face found in the image")
        return out  # type: ignore[return-value]


def _haar_aligner(**kwargs) -> LandmarkAligner:
    return LandmarkAligner(detector="haar", **kwargs)


def _mtcnn_aligner(**kwargs) -> LandmarkAligner:
    return LandmarkAligner(detector="mtcnn", **kwargs)


# Face steps by ``spec.face_align``: the aligners cut a size x size chip; haar-crop cuts the
# photo's main face out of the image (the spec's resize and centre crop follow).
# mtcnn5: MTCNN boxes refined by the same 5-point model as dlib5 (no dlib needed at all).
FACE_ALIGNERS = {"dlib5": LandmarkAligner, "haar5": _haar_aligner, "mtcnn5": _mtcnn_aligner,
                 "lfw-fixed": FixedAligner,
                 "haar-crop": HaarCrop}
DETECTING = DETECTING_FACE_STEPS  # ``on_miss`` applies to these


def get_face_aligner(name: str, *, size: int = 150, on_miss: str = "fallback", **kwargs):
    """The face step registered under ``name`` (a callable PIL image -> PIL image). ``on_miss``
    (``spec.face_on_miss``): "fallback" or "require" (raise FaceNotFoundError without a face);
    the fixed crop detects nothing and ignores it."""
    if name not in FACE_ALIGNERS:
        raise ValueError(f"unknown face aligner {name!r}; valid: {', '.join(sorted(FACE_ALIGNERS))}")
    if name in DETECTING:
        kwargs.setdefault("fallback", check_on_miss(on_miss) == "fallback")
    return FACE_ALIGNERS[name](size=size, **kwargs)
