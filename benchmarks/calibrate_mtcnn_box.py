"""Calibrate the MTCNN box -> dlib HOG box mapping (issue 16) on LFW View 1, never View 2.

dlib's 5-point landmark model was trained on boxes of dlib's HOG detector, so the mtcnn5 face
step maps each MTCNN box onto the box HOG would draw around the same face before fitting the
landmarks. The first mapping was four fixed ratios (centre shift, width and height scale:
medians over 158 faces). This script fits a least-squares map from MTCNN's box and its own 5
landmarks (which see the pose: a turned head moves HOG's box) to HOG's box, on the photos of
View 1's training pairs (pairsDevTrain.txt) where both detectors find one face, and compares
both maps on View 1's test pairs (pairsDevTest.txt): the IoU with HOG's box, and how far dlib's
landmarks fitted in the mapped box land from those fitted in HOG's own box.

    .venv/bin/python benchmarks/calibrate_mtcnn_box.py [--data DIR] [--limit N]

Prints the coefficients (for training/face/aligners.py) and a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.face.aligners import (  # noqa: E402
    MTCNN_TO_DLIB,
    box_features,
    dlib_box_of,
    find_landmarks_file,
    fixed_ratio_box,
)
from training.face.landmarks import ShapePredictor  # noqa: E402
from training.face.mtcnn import MTCNN  # noqa: E402
from training.settings import data_root  # noqa: E402


def view1_photos(data: Path, name: str) -> list[Path]:
    lines = (data / "lfw" / name).read_text().split("\n")[1:]
    root = data / "lfw" / "lfw-deepfunneled"
    out = set()
    for line in lines:
        f = line.split()
        if len(f) == 3:
            out |= {root / f[0] / f"{f[0]}_{int(f[1]):04d}.jpg",
                    root / f[0] / f"{f[0]}_{int(f[2]):04d}.jpg"}
        elif len(f) == 4:
            out |= {root / f[0] / f"{f[0]}_{int(f[1]):04d}.jpg",
                    root / f[2] / f"{f[2]}_{int(f[3]):04d}.jpg"}
    return sorted(out)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def pairs_of(paths: list[Path], hog, mtcnn: MTCNN, grey: bool = False):
    """(MTCNN box, MTCNN points, HOG box, rgb) for photos where both find a face that overlap
    (``grey``: the photos made greyscale first, as LFW's grey row)."""
    rgbs = [np.asarray((Image.open(p).convert("L") if grey else Image.open(p)).convert("RGB"))
            for p in paths]
    found = []
    for s in range(0, len(rgbs), 64):
        found += mtcnn(rgbs[s:s + 64])
    out = []
    for rgb, d in zip(rgbs, found, strict=True):
        dets = hog(rgb, 1)
        if not len(d) or not len(dets):
            continue
        h = max(dets, key=lambda r: r.area())
        hb = np.array([h.left(), h.top(), h.right(), h.bottom()], np.float64)
        m = np.asarray(d.boxes[0], np.float64)
        if iou(m[None], hb[None])[0] < 0.3:
            continue
        out.append((m, np.asarray(d.points[0], np.float64), hb, rgb))
    return out


def target(m: np.ndarray, hb: np.ndarray) -> np.ndarray:
    """HOG's box relative to MTCNN's: centre shift in box units, log scales."""
    w, h = m[2] - m[0], m[3] - m[1]
    cx, cy = (m[0] + m[2]) / 2, (m[1] + m[3]) / 2
    return np.array([((hb[0] + hb[2]) / 2 - cx) / w, ((hb[1] + hb[3]) / 2 - cy) / h,
                     np.log((hb[2] - hb[0]) / w), np.log((hb[3] - hb[1]) / h)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(data_root()))
    p.add_argument("--limit", type=int, default=None, help="photos per split (default: all)")
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--grey", action="store_true",
                   help="fit and compare on greyscale versions of the photos")
    args = p.parse_args()
    import dlib

    hog = dlib.get_frontal_face_detector()
    mtcnn = MTCNN(side=128)
    sp = ShapePredictor.load(find_landmarks_file())
    data = Path(args.data)
    t0 = time.perf_counter()
    train = pairs_of(view1_photos(data, "pairsDevTrain.txt")[:args.limit], hog, mtcnn,
                     args.grey)
    test = pairs_of(view1_photos(data, "pairsDevTest.txt")[:args.limit], hog, mtcnn, args.grey)
    print(f"View 1: {len(train)} training photos, {len(test)} test photos with both faces "
          f"({time.perf_counter() - t0:.0f} s)")
    x = np.stack([box_features(m, pts) for m, pts, _, _ in train])
    y = np.stack([target(m, hb) for m, _, hb, _ in train])
    coef = np.linalg.solve(x.T @ x + args.ridge * len(x) * np.eye(x.shape[1]), x.T @ y)
    print("\nMTCNN_BOX_TO_DLIB =", np.array2string(coef.T, precision=5, separator=", ",
                                                   max_line_width=96))

    hog_boxes = np.stack([hb for _, _, hb, _ in test])
    rows = []
    for name, boxes in (
            ("fixed ratios (MTCNN_TO_DLIB)", np.stack([fixed_ratio_box(m, MTCNN_TO_DLIB)
                                                       for m, _, _, _ in test])),
            ("least squares on box + 5 points (this fit)",
             np.stack([dlib_box_of(m, pts, coef.T) for m, pts, _, _ in test])),
            ("MTCNN_BOX_TO_DLIB (the shipped fit)",
             np.stack([dlib_box_of(m, pts) for m, pts, _, _ in test]))):
        lm_err = []
        for (_, _, hb, rgb), b in zip(test, boxes, strict=True):
            ref = sp(rgb, tuple(int(round(v)) for v in hb))
            got = sp(rgb, tuple(int(round(v)) for v in b))
            inter_ocular = np.linalg.norm(ref[0] - ref[2]) + 1e-9  # dlib's 5 points: eye corners
            lm_err.append(np.linalg.norm(got - ref, axis=1).mean() / inter_ocular)
        rows.append((name, iou(boxes, hog_boxes), np.array(lm_err)))
    print(f"\nView 1 test photos ({len(test)}): the mapped box vs HOG's own box\n")
    print("| map | mean IoU | IoU < 0.8 | landmark error (x eye span), mean | p95 |")
    print("|---|---:|---:|---:|---:|")
    for name, ious, err in rows:
        print(f"| {name} | {ious.mean():.4f} | {100 * (ious < 0.8).mean():.1f}% | "
              f"{err.mean():.4f} | {np.percentile(err, 95):.4f} |")


if __name__ == "__main__":
    main()
