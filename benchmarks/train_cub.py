"""Benchmark: CUB-100 retrieval (train classes 0-49, test 50-99) for our losses/miners vs pytorch-metric-learning."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
from train_common import interleaved_speed, train_ours, train_pml

from training.data.datasets import data_root, load_split
from training.engine.train import TrainConfig
from training.evaluation.retrieval import evaluate_retrieval
from training.models.embedder import Embedder

# name -> (loss, miner); "pml" is the external baseline loop
METHODS = {
    "contrastive": ("contrastive", "all-pairs"),
    "triplet-semihard": ("triplet", "semi-hard"),
    "triplet-batchhard": ("triplet", "batch-hard"),
    "pml-triplet-hard": None,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(data_root() / "cub100"))
    p.add_argument("--out", default="runs/bench_cub")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--arch", default="smallcnn")
    p.add_argument("--width", type=int, default=32, help="smallcnn width")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--p", type=int, default=16)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--contrastive-margin", type=float, default=0.5)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-rounds", type=int, default=3, help="0: skip the interleaved timing")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    split = load_split("cub", args.data)
    out = Path(args.out)
    base = TrainConfig(
        data=args.data, out="", format="cub", arch=args.arch, input_size=args.input_size,
        arch_kwargs={"width": args.width} if args.arch == "smallcnn" else None,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, p=args.p, k=args.k,
        lr=args.lr, optimizer="adam", weight_decay=0.0, val_fraction=0.0, val_max_images=500,
        num_workers=args.num_workers, tensorboard=True)
    rows = {}
    for name in args.methods.split(","):
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
        cfg = replace(base, out=str(out / name), name=name)
        t0 = time.perf_counter()
        if METHODS[name] is None:
            path, ips = train_pml(cfg, split)
        else:
            loss, miner = METHODS[name]
            cfg = replace(cfg, loss=loss, miner=miner,
                          margin=args.contrastive_margin if loss == "contrastive" else 0.2)
            path, ips = train_ours(cfg)
        minutes = (time.perf_counter() - t0) / 60
        m = evaluate_retrieval(Embedder.from_checkpoint(path), split.test,
                               num_workers=args.num_workers)
        rows[name] = {**m, "train_images_per_s": ips, "train_minutes": minutes}
        logging.info("%s: %s", name, rows[name])
        (out / "results.json").write_text(json.dumps(rows, indent=2))
    speed = {}
    if args.speed_rounds:
        speed = interleaved_speed(replace(base, out=str(out / "speed")), split,
                                  rounds=args.speed_rounds, logdir=out / "speed")
    (out / "results.json").write_text(json.dumps({"methods": rows, "speed": speed,
                                                  "args": vars(args)}, indent=2))
    print(f"CUB-100, train classes 0-49 ({len(split.train)} images), test 50-99 "
          f"({len(split.test)} images); {args.arch} {args.input_size}px, {args.epochs} epochs, "
          f"batch {args.p}x{args.k}, Adam lr {args.lr}")
    print(f"{'method':<20} {'R@1':>6} {'R@2':>6} {'R@4':>6} {'R@8':>6} {'MAP@R':>6} {'NMI':>6}"
          f" {'img/s':>6} {'min':>5}")
    for name, r in rows.items():
        print(f"{name:<20} " + " ".join(f"{100 * r[k]:6.2f}" for k in
                                        ["recall@1", "recall@2", "recall@4", "recall@8", "map@r",
                                         "nmi"])
              + f" {r['train_images_per_s']:6.1f} {r['train_minutes']:5.1f}")
    if speed:
        print(f"interleaved loop speed ({args.speed_rounds} rounds, triplet+batch-hard vs pml "
              f"triplet+hard): ours {speed['ours']:.1f} img/s, pml {speed['pml']:.1f} img/s, "
              f"ratio {speed['ours'] / speed['pml']:.2f}")


if __name__ == "__main__":
    main()
