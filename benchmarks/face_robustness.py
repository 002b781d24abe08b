"""Benchmark (issue 16): our dlib5 face pipeline vs face_recognition's on LFW View 2 as shipped
and degraded (96 px, 64 px, greyscale, JPEG q30): detection rate, behaviour on a miss, and
View 2 accuracy with per-fold thresholds."""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.checkpoint import load_checkpoint
from training.evaluation.lfw import LfwPairs, load_view2, view2_accuracy
from training.face.aligners import FixedAligner, LandmarkAligner, find_landmarks_file
from training.face.chips import face_chip
from training.face.main_face import main_face_first
from training.models.embedder import Embedder
from training.settings import data_root

log = logging.getLogger("face_robustness")


def degrade(image: Image.Image, row: str) -> Image.Image:
    """The photo as a user might send it. Downscaling keeps the aspect (250 -> 96 or 64 px);
    "96px+grey" applies both, in that order."""
    image = image.convert("RGB")
    if "+" in row:
        for part in row.split("+"):
            image = degrade(image, part)
        return image
    if row == "shipped":
        return image
    if row in ("96px", "64px"):
        side = int(row[:-2])
        return image.resize((side, side), Image.BICUBIC)
    if row == "grey":
        return image.convert("L").convert("RGB")
    if row == "jpeg30":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=30)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    raise ValueError(f"unknown row {row!r}")


def subset(pairs: LfwPairs, folds: list[int], limit: int | None) -> LfwPairs:
    """``folds`` of View 2; with ``limit``, the first limit/2 genuine and limit/2 impostor
    pairs of each fold (balanced like the full folds)."""
    pairs = pairs.select(folds)
    if limit is None:
        return pairs
    keep = np.zeros(len(pairs), bool)
    for f in folds:
        for same in (True, False):
            idx = np.flatnonzero((pairs.fold == f) & (pairs.same == same))[: limit // 2]
            keep[idx] = True
    return LfwPairs([p for p, k in zip(pairs.paths_a, keep, strict=True) if k],
                    [p for p, k in zip(pairs.paths_b, keep, strict=True) if k],
                    pairs.same[keep], pairs.fold[keep])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="var/dlib.pt", help="imgsim import-dlib output")
    p.add_argument("--data", default=str(data_root()))
    p.add_argument("--folds", type=int, default=10, help="use View 2 folds 1..N (>= 2)")
    p.add_argument("--limit", type=int, default=None, help="pairs per fold (default: all 600)")
    p.add_argument("--rows", default="shipped,96px,64px,grey,jpeg30",
                   help="comma-separated; NAME@2 runs that row with the detector upsampled "
                        "twice (both pipelines), e.g. 64px@2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    import dlib  # dlib-bin: face_recognition's own calls, made directly (see below)

    # face_recognition 1.3.0 installs (--no-deps) but cannot be imported here: its
    # face_recognition_models needs pkg_resources, which this setuptools lacks. So its
    # pipeline is reproduced call for call: face_locations(img) = detector(img, 1);
    # face_encodings(img, model="small") = pose_predictor_5_point + compute_face_descriptor
    # (num_jitters=1), which cuts dlib's own 150 px chip (padding 0.25).
    detector = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(find_landmarks_file()))
    frec_path = Path(find_landmarks_file()).parent / "dlib_face_recognition_resnet_model_v1.dat"
    frec = dlib.face_recognition_model_v1(str(frec_path))

    ckpt = load_checkpoint(args.checkpoint)
    chip_spec = replace(ckpt.spec, face_align=None)  # chips are cut here, to count the misses
    ours = Embedder(ckpt.build(), chip_spec)
    aligner = LandmarkAligner()  # dlib5's: HOG (upsample 1) + our 5-point port + our chip
    fixed = FixedAligner()

    pairs = subset(load_view2(args.data), list(range(1, args.folds + 1)), args.limit)
    paths = pairs.unique_paths()
    row_of = {q: i for i, q in enumerate(paths)}
    ia = np.array([row_of[q] for q in pairs.paths_a])
    ib = np.array([row_of[q] for q in pairs.paths_b])
    log.info("%d pairs, %d images, folds 1-%d", len(pairs), len(paths), args.folds)
    results = []
    for row_name in args.rows.split(","):
        # "64px@2": the 64 px row with the detector upsampled twice, in both pipelines
        row, _, up = row_name.partition("@")
        upsample = int(up or 1)
        t0 = time.perf_counter()
        found = np.zeros(len(paths), bool)
        found_up2 = np.zeros(len(paths), bool)
        chips, fr_desc = [], np.zeros((len(paths), 128), np.float32)
        for i, path in enumerate(paths):
            image = degrade(Image.open(path), row)
            rgb = np.asarray(image)
            dets = detector(rgb, upsample)
            found[i] = len(dets) > 0
            if not found[i]:  # would a second upsampling find it? (cause: small faces)
                found_up2[i] = upsample < 2 and len(detector(rgb, 2)) > 0
            # ours: the same detector call as dlib5 and its choice of face (main_face_first),
            # our landmarks and chip; on a miss, dlib5 with face_on_miss=fallback uses the
            # fixed LFW chip
            boxes = main_face_first([(d.left(), d.top(), d.right(), d.bottom()) for d in dets],
                                    rgb.shape[1], rgb.shape[0])
            if boxes:
                lm = aligner.landmarks(rgb, boxes[0])
                chips.append(Image.fromarray(face_chip(rgb, lm, size=150, padding=0.25)))
            else:
                chips.append(fixed(image))
            # face_recognition: face_encodings returns nothing on a miss; the usual caller's
            # way to still get a vector (and what is measured here) is the whole image as
            # the box (known_face_locations=[(0, w, h, 0)])
            det = dets[0] if dets else dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
            if len(dets) > 1:  # face_encodings keeps them all; a verifier uses the first
                det = max(dets, key=lambda d: d.area())
            fr_desc[i] = np.array(frec.compute_face_descriptor(rgb, sp(rgb, det), 1))
        emb = ours.embed_images(chips, batch_size=32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # the issue-16 contract: unit rows
        both = found[ia] & found[ib]
        entry = {"row": row_name, "detected": float(found.mean()),
                 "detected_with_upsample_2": float((found | found_up2).mean()),
                 "pairs_both_found": float(both.mean()), "seconds": time.perf_counter() - t0}
        for name, e in (("ours", emb), ("face_recognition", fr_desc)):
            dist = np.linalg.norm(e[ia] - e[ib], axis=1)
            acc = view2_accuracy(dist, pairs.same, pairs.fold)
            entry[name] = acc["accuracy_mean"]
            entry[f"{name}_std"] = acc["accuracy_std"]
            miss = ~both
            entry[f"{name}_on_miss_pairs"] = (
                float(((dist[miss] <= np.mean(acc["thresholds"])) == pairs.same[miss]).mean())
                if miss.any() else None)
        log.info("%s", entry)
        results.append(entry)

    print(f"\n{len(pairs)} pairs ({len(paths)} images), View 2 folds 1-{args.folds}, "
          f"{'all' if args.limit is None else args.limit} pairs per fold\n")
    print("| row | detected | detected with upsample 2 | pairs with both faces | "
          "ours | face_recognition | ours on miss pairs | face_recognition on miss pairs | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in results:
        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}%"
        print(f"| {e['row']} | {pct(e['detected'])} | {pct(e['detected_with_upsample_2'])} | "
              f"{pct(e['pairs_both_found'])} | {pct(e['ours'])} ± {100 * e['ours_std']:.2f} | "
              f"{pct(e['face_recognition'])} ± {100 * e['face_recognition_std']:.2f} | "
              f"{pct(e['ours_on_miss_pairs'])} | {pct(e['face_recognition_on_miss_pairs'])} | "
              f"{e['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
