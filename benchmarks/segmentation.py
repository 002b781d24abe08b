"""Benchmark: U-Net vs SegNet with each decoder upsampling, same training budget, scored on
held-out labelled ISBI 2012 slices (pixel error, foreground IoU, adapted Rand error).

    .venv/bin/python benchmarks/segmentation.py --steps 300 --out runs/seg-bench

Prints a markdown table; writes results.json, the checkpoints and an overlay per model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import load_seg_checkpoint
from training.segmentation.data import load_isbi, parse_slices
from training.segmentation.infer import predict_probs
from training.segmentation.metrics import mean_scores, score_membranes
from training.segmentation.outputs import save_overlay
from training.segmentation.train import SegTrainConfig, train_segmenter
from training.settings import data_root

MODELS = ["unet:transposed", "unet:nearest", "unet:unpool",
          "segnet:unpool", "segnet:nearest", "segnet:transposed"]
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=os.path.join(str(data_root()), "isbi2012"))
    p.add_argument("--out", default="runs/seg-bench")
    p.add_argument("--models", default=",".join(MODELS), help="arch:upsampling,...")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop a model's training after this wall time (safety cap)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-map", default="unet")
    p.add_argument("--train-slices", default="0-19")
    p.add_argument("--val-slices", default="20-23")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tta", action="store_true", help="8-fold flip/rotation averaging at test")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    val = load_isbi(args.data, parse_slices(args.val_slices))
    base = SegTrainConfig(data=args.data, steps=args.steps, max_seconds=args.max_seconds,
                          batch_size=args.batch_size,
                          tile=args.tile, width=args.width, depth=args.depth, lr=args.lr,
                          weight_map=args.weight_map, train_slices=args.train_slices,
                          val_slices="", seed=args.seed, threads=args.threads)
    rows = []
    for spec in args.models.split(","):
        arch, up = spec.split(":")
        name = f"{arch}-{up}"
        t0 = time.perf_counter()
        ck_path = train_segmenter(replace(base, arch=arch, upsampling=up, out=str(out / name)))
        train_s = time.perf_counter() - t0
        ck = load_seg_checkpoint(ck_path)
        model = ck.build()
        t1 = time.perf_counter()
        probs = [predict_probs(model, s.image, tile=256, margin=32, mean=ck.mean, std=ck.std,
                               tta=args.tta)[1] for s in val]
        infer_s = (time.perf_counter() - t1) / len(val)
        by_thr = {t: mean_scores([score_membranes(pr, s.mask, threshold=t)
                                  for pr, s in zip(probs, val, strict=True)]) for t in THRESHOLDS}
        at = by_thr[0.5]
        best_t = min(THRESHOLDS, key=lambda t: by_thr[t].rand_error)
        save_overlay(out / f"{name}_slice{val[0].name}.png", val[0].image, probs[0] >= 0.5,
                     true_membrane=val[0].mask.astype(bool))
        row = {"model": name, "params": sum(v.numel() for v in ck.state_dict.values()
                                            if v.dtype.is_floating_point),
               "steps": ck.metrics["steps"], "train_s": round(train_s, 1),
               "infer_s_per_slice": round(infer_s, 2),
               "pixel_error": at.pixel_error, "fg_iou": at.foreground_iou,
               "rand_error": at.rand_error, "best_rand_error": by_thr[best_t].rand_error,
               "best_threshold": best_t, "pixel_error_at_best": by_thr[best_t].pixel_error}
        rows.append(row)
        logging.info("%s", row)
        (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                     indent=2))
    print(f"\nISBI 2012, train slices {args.train_slices}, held-out slices {args.val_slices}; "
          f"budget per model: {args.steps} steps x {args.batch_size} tiles of {args.tile}px, "
          f"width {args.width}, depth {args.depth}, weight map {args.weight_map}, "
          f"{args.threads} thread(s){', TTA' if args.tta else ''}\n")
    print("| model | params | train s | pixel error | fg IoU | Rand error @0.5 "
          "| best Rand error (thr) | s/slice |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e3:.0f}k | {r['train_s']:.0f} "
              f"| {r['pixel_error']:.4f} | {r['fg_iou']:.4f} | {r['rand_error']:.4f} "
              f"| {r['best_rand_error']:.4f} ({r['best_threshold']}) "
              f"| {r['infer_s_per_slice']:.2f} |")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
