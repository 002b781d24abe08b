"""Optional face pipeline: find the largest face (OpenCV Haar cascade) and crop it before embedding.

Modes (set per served model, ``ServeConfig.face``): ``off`` embeds the whole image;
``require`` crops the largest face and refuses an image without one; ``fallback`` crops when
a face is found and embeds the whole image otherwise.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

FACE_MODES = ("off", "require", "fallback")
_local = threading.local()  # CascadeClassifier instances are not safe to share across threads


def check_face_mode(mode: str) -> str:
    if mode not in FACE_MODES:
        raise ValueError(f"unknown face mode {mode!r}; valid: {', '.join(FACE_MODES)}")
    return mode


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
    """Face boxes (x, y, w, h) in pixels, largest first."""
    import cv2

    gray = np.asarray(img.convert("L"))
    side = min(gray.shape)
    boxes = _cascade().detectMultiScale(cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5,
                                        minSize=(max(20, side // 10),) * 2)
    return sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: -b[2] * b[3])


def crop_largest_face(img: Image.Image, *, margin: float = 0.25) -> Image.Image | None:
    """The largest face with ``margin`` (fraction of its size) around it, or None."""
    boxes = detect_faces(img)
    if not boxes:
        return None
    x, y, w, h = boxes[0]
    mx, my = int(w * margin), int(h * margin)
    box = (max(x - mx, 0), max(y - my, 0), min(x + w + mx, img.width), min(y + h + my, img.height))
    return img.crop(box)
