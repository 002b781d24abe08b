"""Benchmark: HTL, dataset-wide hard negatives, ensembles and AE pre-training vs triplet + batch-hard on CUB-100 (train 0-49, test 50-99) or LFW halves."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.checkpoint import load_checkpoint, save_checkpoint
from training.data.datasets import data_root, load_split
from training.data.folders import Sample
from training.engine.train import TrainConfig, train
from training.evaluation.lfw import evaluate_lfw
from training.evaluation.retrieval import retrieval_metrics
from training.losses.triplet import TripletLoss
from training.models.embedder import Embedder
from training.models.ensemble import combine_checkpoint_files
from training.pretraining.autoencoder import PretrainConfig, pretrain

log = logging.getLogger("train_beyond")

# "contrastive" (the strongest plain loss of the issue-3 table) is a reference row, not in
# the default set
# "notree" is HTL without its tree (the same all-triplet loss with the constant margin β and
# P x K batches): what the tree adds
# "htl-pk" keeps HTL's tree margin but draws P x K batches: what the tree sampler adds
METHODS = ("baseline", "htl", "mining", "contrastive", "notree", "htl-pk")


def cache_images(samples: list[Sample], root: Path, shorter: int) -> list[Sample]:
    """Copies resized so that the shorter side is ``shorter`` px (JPEG q95), decoded once
    instead of every epoch; the eval transform's resize is then a no-op."""
    out = []
    for s in samples:
        src = Path(s.path)
        dst = root / s.label / src.name
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as img:
                img = img.convert("RGB")
                w, h = img.size
                r = shorter / min(w, h)
                img.resize((max(shorter, round(w * r)), max(shorter, round(h * r))),
                           Image.BICUBIC).save(dst, quality=95)
        out.append(Sample(str(dst), s.label))
    return out


def run(method: str, cfg: TrainConfig, train_s: list[Sample], args) -> dict:
    """Train one row's model through ``training.engine.train.train``; returns its path and timings."""
    cfg = {
        "baseline": replace(cfg, loss="triplet", miner="batch-hard", sampler="pk"),
        "htl": replace(cfg, loss="htl", miner="all-triplets", sampler="hierarchical",
                       margin=args.htl_beta),
        "mining": replace(cfg, loss="triplet", miner="batch-hard", sampler="hard-negatives"),
        "contrastive": replace(cfg, loss="contrastive", miner="all-pairs", sampler="pk",
                               margin=0.5),
        "notree": replace(cfg, loss="triplet", miner="all-triplets", sampler="pk",
                          margin=args.htl_beta),
        "htl-pk": replace(cfg, loss="htl", miner="all-triplets", sampler="pk",
                          margin=args.htl_beta),
    }[method]
    # HTL's reduction (mean over the active triplets); with no tree its margin is β throughout
    loss_fn = TripletLoss(margin=args.htl_beta, reduction="nonzero") if method == "notree" \
        else None
    path = Path(cfg.out) / "model.pt"
    if args.reuse and path.is_file():
        log.info("reusing %s", path)
        return timings(path, wall=None)
    t0 = time.perf_counter()
    path = train(cfg, train_s, loss_fn=loss_fn)
    return timings(path, wall=time.perf_counter() - t0)


def timings(path: Path, *, wall: float | None) -> dict:
    """Training-loop and refresh (tree rebuild / mining) seconds from the run's history."""
    hist = load_checkpoint(path).metrics.get("history", [])
    loop = sum(r["seconds"] for r in hist)
    refresh_s = sum(r.get("tree_seconds", 0.0) + r.get("mining_seconds", 0.0) for r in hist)
    return {"path": str(path), "wall_s": wall, "train_s": loop + refresh_s,
            "loop_s": loop, "refresh_s": refresh_s,
            # epoch-start refreshes run outside the loop's epoch timer: add them back
            "refresh_fraction": refresh_s / (loop + refresh_s) if loop else float("nan")}


class Evaluator:
    """CUB-100: retrieval on the test classes (every image queries all others);
    LFW: View 2 accuracy on the test folds (threshold from the other test folds)."""

    def __init__(self, dataset: str, data: str, test_s: list[Sample], test_folds: list[int]):
        self.dataset, self.data, self.test_s, self.test_folds = dataset, data, test_s, test_folds
        self.key = "recall@1" if dataset == "cub" else "accuracy_mean"

    def __call__(self, path: str | Path) -> dict:
        embedder = Embedder.from_checkpoint(path)
        if self.dataset == "lfw":
            return evaluate_lfw(embedder, self.data, folds=self.test_folds, batch_size=128,
                                num_workers=0)
        emb = embedder.embed_paths([s.path for s in self.test_s], batch_size=128)
        return retrieval_metrics(emb, [s.label for s in self.test_s], nmi=False)

    def columns(self) -> tuple[str, list[str]]:
        if self.dataset == "lfw":
            return "accuracy % (mean ± sd over folds)", ["auc", "tar_at_far_1e-3", "eer"]
        return "R@1 (mean ± sd)", ["recall@2", "recall@4", "recall@8", "map@r"]


def summary(rows: list[dict], key: str) -> tuple[float, float]:
    v = np.array([r["metrics"][key] for r in rows]) * 100
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def _save(args, results: dict) -> None:
    """Results so far as JSON (a long run that dies keeps its finished rows)."""
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results},
                                              indent=1, default=str))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="cub", choices=["cub", "lfw"])
    p.add_argument("--data", default=None, help="default: $IMGSIM_DATA/cub100 or .../lfw")
    p.add_argument("--lfw-train-folds", default="1,2,3,4,5",
                   help="lfw: train on these folds' people, test View 2 on the others")
    p.add_argument("--out", default="runs/bench_beyond")
    p.add_argument("--cache", default="/tmp/imgsim_bench_cache", help="resized image copies")
    p.add_argument("--rows", default="baseline,htl,mining,ensemble,ae")
    p.add_argument("--seeds", default="0,1", help="seeds of the baseline and HTL rows")
    p.add_argument("--width", type=int, default=16, help="smallcnn width")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=40)
    p.add_argument("--p", type=int, default=8)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--htl-beta", type=float, default=0.1)
    p.add_argument("--tree-levels", type=int, default=8)
    p.add_argument("--refresh-max-per-class", type=int, default=15)
    p.add_argument("--refresh-every", type=int, default=0,
                   help="rebuild the tree / re-mine every N steps (0: every epoch)")
    p.add_argument("--ae-epochs", type=int, default=1)
    p.add_argument("--ensemble-of", default="baseline",
                   help="comma-separated recipes; one ensemble row of 3 seeds for each")
    p.add_argument("--reuse", action="store_true",
                   help="evaluate an existing <out>/<row>_s<seed>/model.pt instead of training")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    folds = list(range(1, 11))
    train_folds = [int(f) for f in args.lfw_train_folds.split(",")]
    test_folds = [f for f in folds if f not in train_folds]
    data = args.data or str(data_root() / ("cub100" if args.dataset == "cub" else "lfw"))
    kwargs = {"train_folds": tuple(train_folds)} if args.dataset == "lfw" else {}
    split = load_split(args.dataset, data, **kwargs)
    shorter = round(args.input_size * split.resize_ratio)
    cache = Path(args.cache) / f"{args.dataset}_{shorter}"
    train_s = cache_images(split.train, cache, shorter)
    # LFW is evaluated on the pairs of the test folds, read from the original files
    test_s = cache_images(split.test, cache, shorter) if args.dataset == "cub" else []
    evaluate = Evaluator(args.dataset, data, test_s, test_folds)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = TrainConfig(
        data=data, out="", arch="smallcnn", arch_kwargs={"width": args.width},
        embedding_dim=args.embedding_dim, input_size=args.input_size, resize_size=shorter,
        augmentation=split.augment, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        p=args.p, k=args.k, lr=args.lr, val_fraction=0.0, num_workers=0, tensorboard=False,
        norms_every=10_000, calibration_pairs=500, val_max_images=300,
        tree_levels=args.tree_levels,
        refresh_max_per_class=args.refresh_max_per_class, refresh_every=args.refresh_every)
    wanted = args.rows.split(",")
    results: dict[str, list[dict]] = {}
    for method in [m for m in METHODS if m in wanted]:
        for seed in (seeds if method != "mining" else seeds[:1]):
            cfg = replace(base, seed=seed, out=str(out / f"{method}_s{seed}"),
                          name=f"{method}-s{seed}")
            row = run(method, cfg, train_s, args)
            row["metrics"] = evaluate(row["path"])
            row["seed"] = seed
            results.setdefault(method, []).append(row)
            _save(args, results)
            log.info("%s seed %d: %s %.4f (%.0f s)", method, seed, evaluate.key,
                     row["metrics"][evaluate.key], row["train_s"])
    for of in (args.ensemble_of.split(",") if "ensemble" in wanted else []):
        members = list(results.get(of, []))
        for seed in range(100):  # more members of the same recipe, other seeds
            if len(members) == 3:
                break
            if seed in [m["seed"] for m in members]:
                continue
            cfg = replace(base, seed=seed, out=str(out / f"{of}_s{seed}"), name=f"{of}-s{seed}")
            members.append({**run(of, cfg, train_s, args), "seed": seed})
        for m in members:
            m.setdefault("metrics", evaluate(m["path"]))
        ens = save_checkpoint(out / f"ensemble3_{of}" / "model.pt",
                              combine_checkpoint_files([m["path"] for m in members],
                                                       name=f"ensemble3-{of}"))
        results[f"ensemble_{of}"] = [{
            "path": str(ens), "metrics": evaluate(ens), "of": of,
            "train_s": sum(m["train_s"] for m in members), "members": [m["seed"] for m in members],
            "member_r1": [m["metrics"][evaluate.key] for m in members]}]
        _save(args, results)
    if "ae" in wanted:
        best = max((m for m in ("baseline", "htl") if m in results),
                   key=lambda m: summary(results[m], evaluate.key)[0], default="baseline")
        list_file = out / "ae_images.txt"
        out.mkdir(parents=True, exist_ok=True)
        list_file.write_text("\n".join(s.path for s in train_s))  # train classes only
        t0 = time.perf_counter()
        ae = out / "ae" / "autoencoder.pt"
        if not (args.reuse and ae.is_file()):
            ae = pretrain(PretrainConfig(out=str(out / "ae"), list_file=str(list_file),
                                         arch_kwargs={"width": args.width},
                                         input_size=args.input_size, epochs=args.ae_epochs,
                                         batch_size=args.p * args.k, lr=1e-3, num_workers=0,
                                         seed=seeds[0]))
        ae_s = time.perf_counter() - t0
        with open(Path(ae).parent / "metrics.csv") as f:  # the AE's own epochs (also on reuse)
            ae_rows = list(csv.DictReader(f))
        if ae_rows and "seconds" in ae_rows[0]:
            ae_s = sum(float(r["seconds"]) for r in ae_rows)
        cfg = replace(base, seed=seeds[0], out=str(out / f"ae_{best}_s{seeds[0]}"),
                      name=f"ae-{best}")
        row = run(best, replace(cfg, init_from_autoencoder=str(ae)), train_s, args)
        row.update(metrics=evaluate(row["path"]), seed=seeds[0], ae_s=ae_s, loss=best)
        results["ae"] = [row]
        _save(args, results)

    budget = (f"smallcnn width {args.width}, {args.input_size} px, {args.embedding_dim}-d, "
              f"{args.epochs} epochs x {args.steps_per_epoch or 'one pass'} steps of "
              f"{args.p}x{args.k} images, AdamW lr {args.lr}")
    if args.dataset == "cub":
        print(f"\nCUB-100, train classes 0-49 ({len(train_s)} images), test 50-99 "
              f"({len(test_s)} images, every image queries all others); {budget}\n")
    else:
        print(f"\nLFW identity-disjoint halves: train on the people of folds "
              f"{args.lfw_train_folds} ({len(train_s)} images), View 2 on folds "
              f"{','.join(map(str, test_folds))}; {budget}\n")
    head, cols = evaluate.columns()
    print(f"| row | seeds | {head} | {' | '.join(cols)} | train s | refresh share |")
    print("|---" * (len(cols) + 5) + "|")
    names = {"baseline": "triplet + batch-hard (P x K)", "htl": "HTL (tree sampler + tree margin)",
             "mining": "triplet + batch-hard, FAISS-mined batches",
             "contrastive": "contrastive (m=0.5, all pairs; reference)",
             "notree": "HTL without the tree (all triplets, margin β, P x K)",
             "htl-pk": "HTL tree margin, P x K batches (no tree sampler)",
             "ensemble": "ensemble of 3 x {of}",
             "ae": "AE-pretrained + {loss}"}
    for key, rows in results.items():
        kind = "ensemble" if key.startswith("ensemble_") else key
        mean, sd = summary(rows, evaluate.key)
        m = {k: np.mean([r["metrics"][k] for r in rows]) * 100 for k in cols}
        frac = np.mean([r.get("refresh_fraction", np.nan) for r in rows])
        label = names[kind].format(loss=rows[0].get("loss", ""), of=rows[0].get("of", ""))
        seeds_txt = ",".join(str(r.get("seed", "")) for r in rows) if kind != "ensemble" \
            else "members " + ",".join(map(str, rows[0]["members"])) + " (each " + \
            ", ".join(f"{r * 100:.1f}" for r in rows[0]["member_r1"]) + ")"
        r1 = f"{mean:.1f} ± {sd:.1f}" if not np.isnan(sd) else f"{mean:.1f}"
        share = f"{frac * 100:.0f}%" if not np.isnan(frac) else "-"
        print(f"| {label} | {seeds_txt} | {r1} | "
              + " | ".join(f"{m[c]:.1f}" for c in cols)
              + f" | {np.mean([r['train_s'] for r in rows]):.0f} | {share} |")
    if "ae" in results:
        print(f"\nAE pre-training ({args.ae_epochs} epochs on the training-class images): "
              f"{results['ae'][0]['ae_s']:.0f} s, not counted in the row's train time")
    print("train s: the training loop plus tree rebuilds / mining (all members for an "
          "ensemble); refresh share: rebuild or mining time / train s")
    _save(args, results)


if __name__ == "__main__":
    main()
