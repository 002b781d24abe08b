"""Benchmark: LFW identity-disjoint halves (train on the people of folds 1-5, View 2 test on folds 6-10, and the reverse)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from training.data.datasets import data_root
from training.engine.train import TrainConfig, train
from training.evaluation.lfw import load_view2, pair_distances_by_path, view2_accuracy
from training.models.embedder import Embedder

HALVES = {"1-5": (1, 2, 3, 4, 5), "6-10": (6, 7, 8, 9, 10)}


def evaluate(path: Path, data: str, folds: tuple[int, ...], num_workers: int) -> dict:
    pairs = load_view2(data).select(folds)
    embedder = Embedder.from_checkpoint(path)
    paths = pairs.unique_paths()
    plain, flipped = embedder.embed_paths_and_flips(paths, num_workers=num_workers, progress=True)
    out = {}
    for name, emb in [("plain", plain), ("flip_tta", embedder.combine_flips(plain, flipped))]:
        out[name] = view2_accuracy(pair_distances_by_path(pairs, paths, emb), pairs.same,
                                   pairs.fold, folds)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(data_root() / "lfw"))
    p.add_argument("--out", default="runs/bench_lfw")
    p.add_argument("--train-halves", default="1-5", help="comma list of 1-5 and/or 6-10")
    p.add_argument("--arch", default="smallcnn")
    p.add_argument("--width", type=int, default=16, help="smallcnn width")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--loss", default="contrastive")
    p.add_argument("--miner", default=None)
    p.add_argument("--margin", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps-per-epoch", type=int, default=20)
    p.add_argument("--p", type=int, default=16)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    rows = {}
    for half in args.train_halves.split(","):
        train_folds = HALVES[half]
        test_folds = tuple(f for f in range(1, 11) if f not in train_folds)
        cfg = TrainConfig(
            data=args.data, out=str(Path(args.out) / f"train{half}"), format="lfw",
            lfw_train_folds=train_folds, arch=args.arch,
            arch_kwargs={"width": args.width} if args.arch == "smallcnn" else None,
            input_size=args.input_size, loss=args.loss, miner=args.miner, margin=args.margin,
            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, p=args.p, k=args.k,
            lr=args.lr, optimizer="adam", weight_decay=0.0, val_fraction=0.1,
            val_max_images=600, num_workers=args.num_workers, name=f"lfw{half}")
        t0 = time.perf_counter()
        path = train(cfg)
        minutes = (time.perf_counter() - t0) / 60
        rows[half] = {"test_folds": list(test_folds), "train_minutes": minutes,
                      **evaluate(path, args.data, test_folds, args.num_workers)}
        Path(args.out, "results.json").write_text(json.dumps({"rows": rows, "args": vars(args)},
                                                             indent=2))
    print(f"LFW identity-disjoint halves, View 2 protocol on the test folds; {args.arch} "
          f"(width {args.width}) {args.input_size}px, {args.loss} m={args.margin}, "
          f"{args.epochs}x{args.steps_per_epoch} steps of {args.p}x{args.k}, Adam lr {args.lr}")
    print(f"{'train people':<13} {'test folds':<10} {'TTA':<5} {'accuracy %':>14} {'AUC':>6} "
          f"{'TAR@1e-3':>8} {'EER %':>6} {'min':>5}")
    for half, r in rows.items():
        for tta in ("plain", "flip_tta"):
            m = r[tta]
            print(f"folds {half:<7} {r['test_folds'][0]}-{r['test_folds'][-1]:<8} "
                  f"{'yes' if tta == 'flip_tta' else 'no':<5} "
                  f"{100 * m['accuracy_mean']:6.2f} ± {100 * m['accuracy_std']:4.2f} "
                  f"{m['auc']:6.3f} {100 * m['tar_at_far_1e-3']:8.2f} {100 * m['eer']:6.2f} "
                  f"{r['train_minutes']:5.1f}")


if __name__ == "__main__":
    main()
