"""The Haar face crop: OpenCV's frontal-face cascade finds the photo's main face, cut with a margin."""

from __future__ import annotations

import logging
import threading

import numpy as np
from PIL import Image

from training.face.main_face import main_face_first
from training.face.stages import FACE_STAGES
from training.models.spec import FACE_ON_MISS

log = logging.getLogger(__name__)

# What a face step does with an image in which it finds no face (``ModelSpec.face_on_miss``):
# "fallback" embeds something anyway (the whole image for haar-crop, the fixed LFW chip for the
# landmark aligners), "require" raises FaceNotFoundError (the service answers INVALID_ARGUMENT,
# indexing skips the image).
ON_MISS = FACE_ON_MISS
_local = threading.local()  # CascadeClassifier instances are not safe to share across threads


class FaceNotFoundError(ValueError):
    """No face was detected in the image."""


def chips_or_fallback(step, images: list[Image.Image]) -> list[tuple[Image.Image | None, bool]]:
    """(chip, found) per image: ``step.find_many`` on the whole batch; where no face was found,
    ``step.fallback_for(image)`` if ``step.fallback`` (counted in FACE_STAGES as "fallback"),
    else None (counted as "refused": the caller refuses that image). The one place a face
    step's miss is decided and counted."""
    out: list[tuple[Image.Image | None, bool]] = []
    for image, chip in zip(images, step.find_many(images), strict=True):
        if chip is not None:
            out.append((chip, True))
        elif step.fallback:
            FACE_STAGES.miss("fallback")
            out.append((step.fallback_for(image), False))
        else:
            FACE_STAGES.miss("refused")
            out.append((None, False))
    return out


def check_on_miss(on_miss: str) -> str:
    if on_miss not in ON_MISS:
        raise ValueError(f"unknown face_on_miss {on_miss!r}; valid: {', '.join(ON_MISS)}")
    return on_miss


def _cascade():
    c = getattr(_local, "cascade", None)
    if c is None:
        import cv2

        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        c = cv2.CascadeClassifier(path)
        if c.empty():
            raise RuntimeError(f"cannot load the OpenCV face cascade {path}")
        _local.cascade = c
    return c


def detect_faces(img: Image.Image) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, w, h) in pixels, the photo's subject first (main_face_first)."""
    import cv2

    gray = np.asarray(img.convert("L"))
    side = min(gray.shape)
    boxes = _cascade().detectMultiScale(cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5,
                                        minSize=(max(20, side // 10),) * 2)
    ltrb = main_face_first([(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in boxes],
                           gray.shape[1], gray.shape[0])
    return [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in ltrb]


def crop_main_face(img: Image.Image, *, margin: float = 0.25) -> Image.Image | None:
    """The photo's main face (:func:`detect_faces`' first) with ``margin`` (fraction of its size) around it, or None."""
    boxes = detect_faces(img)
    if not boxes:
        return None
    x, y, w, h = boxes[0]
    mx, my = int(w * margin), int(h * margin)
    box = (max(x - mx, 0), max(y - my, 0), min(x + w + mx, img.width), min(y + h + my, img.height))
    return img.crop(box)


class HaarCrop:
    """A face step (``spec.face_align = "haar-crop"``): the main face and a margin of a
    quarter of its size, no alignment; the model's resize and centre crop follow. For models
    of ordinary photos whose subject is a face. No face: the whole image (``fallback``) or
    FaceNotFoundError (``fallback=False``, ``face_on_miss = "require"``).

    __call__: PIL image -> PIL image (a crop of it)."""

    def __init__(self, *, size: int = 0, margin: float = 0.25, fallback: bool = True) -> None:
        del size  # the crop keeps its pixels: the spec's resize scales it like any image
        self.margin, self.fallback = margin, fallback

    def find_many(self, images: list[Image.Image]) -> list[Image.Image | None]:
        """The face crop of each image, None where no face was found (no misses counted)."""
        with FACE_STAGES.timed("detect", len(images)):
            return [crop_main_face(im, margin=self.margin) for im in images]

    def fallback_for(self, image: Image.Image) -> Image.Image:
        """What is embedded for an image without a face (with ``fallback``): all of it."""
        return image

    def __call__(self, image: Image.Image) -> Image.Image:
        chip, _ = chips_or_fallback(self, [image])[0]
        if chip is None:
            raise FaceNotFoundError("no face found in the image")
        return chip
