"""Benchmark: a trained segmenter scored on held-out ISBI slices at a membrane threshold chosen
on other slices (the training slices), so that no held-out label tunes anything.

    .venv/bin/python benchmarks/seg_threshold.py --checkpoint runs/seg-long1600/unet-transposed/model.pt \\
        --calibrate-slices 0-19 --val-slices 20-23 --tta

Prints, per threshold, the mean scores on the calibration slices, then the held-out scores at
the thresholds with the lowest calibration Rand error and the lowest calibration pixel error
(and at 0.5 for reference). Calibrate on slices the model never trained on (e.g. train on 0-17
with `segmentation.py --train-slices 0-17`, calibrate on 18-19, score 20-23): a model is more
confident on its own training slices.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from training.checkpoint import load_seg_checkpoint
from training.segmentation.data import load_isbi, parse_slices
from training.segmentation.infer import predict_probs
from training.segmentation.metrics import mean_scores, score_membranes
from training.settings import data_root

THRESHOLDS = tuple(np.round(np.arange(0.3, 0.86, 0.05), 2))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=os.path.join(str(data_root()), "isbi2012"))
    p.add_argument("--calibrate-slices", default="0-19")
    p.add_argument("--val-slices", default="20-23")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grow-cells", action="store_true",
                   help="also score the Rand error after the predicted cells take over the "
                        "predicted membrane (metrics.grow_cells, a post-processing)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ck = load_seg_checkpoint(args.checkpoint)
    model = ck.build()

    def probs(slices):
        return [predict_probs(model, s.image, tile=256, margin=32, mean=ck.mean, std=ck.std,
                              tta=args.tta)[1] for s in slices]

    def scores(slices, pr, t, grow=False):
        return mean_scores([score_membranes(q, s.mask, threshold=t, grow=grow)
                            for q, s in zip(pr, slices, strict=True)])

    cal = load_isbi(args.data, parse_slices(args.calibrate_slices))
    val = load_isbi(args.data, parse_slices(args.val_slices))
    cal_p, val_p = probs(cal), probs(val)
    cal_scores = {t: scores(cal, cal_p, t) for t in THRESHOLDS}
    print(f"calibration slices {args.calibrate_slices}:")
    print("| threshold | pixel error | Rand error |\n|---|---|---|")
    for t, s in cal_scores.items():
        print(f"| {t:.2f} | {s.pixel_error:.4f} | {s.rand_error:.4f} |")
    best = min(THRESHOLDS, key=lambda t: cal_scores[t].rand_error)
    best_px = min(THRESHOLDS, key=lambda t: cal_scores[t].pixel_error)
    print(f"\nheld-out slices {args.val_slices} ({'TTA, ' if args.tta else ''}"
          f"{ck.spec.arch}/{ck.spec.upsampling}, {ck.metrics.get('steps')} steps):")
    print("| threshold | chosen on | pixel error | fg IoU | Rand error |\n|---|---|---|---|---|")
    for t, how in [(0.5, "fixed"),
                   (best, f"slices {args.calibrate_slices}, lowest Rand error"),
                   (best_px, f"slices {args.calibrate_slices}, lowest pixel error")]:
        s = scores(val, val_p, t)
        print(f"| {t:.2f} | {how} | {s.pixel_error:.4f} | {s.foreground_iou:.4f} "
              f"| {s.rand_error:.4f} |")
    if args.grow_cells:
        cal_grown = {t: scores(cal, cal_p, t, grow=True) for t in THRESHOLDS}
        best_g = min(THRESHOLDS, key=lambda t: cal_grown[t].rand_error)
        print(f"\nwith the predicted cells grown over the predicted membrane "
              f"(calibration Rand error per threshold: "
              f"{', '.join(f'{t:.2f}: {g.rand_error:.4f}' for t, g in cal_grown.items())}):")
        print("| threshold | chosen on | pixel error (thresholded) | Rand error, grown cells |"
              "\n|---|---|---|---|")
        for t, how in [(0.5, "fixed"),
                       (best_g, f"slices {args.calibrate_slices}, lowest grown Rand error"),
                       (best_px, f"slices {args.calibrate_slices}, lowest pixel error")]:
            g = scores(val, val_p, t, grow=True)
            print(f"| {t:.2f} | {how} | {g.pixel_error:.4f} | {g.rand_error:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
