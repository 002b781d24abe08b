"""Benchmark: HTL, dataset-wide hard negatives, an ensemble and AE pre-training vs triplet + batch-hard on CUB-100 (train 0-49, test 50-99)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.autoencoder import PretrainConfig, pretrain
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import Sample
from training.datasets import data_root, load_split
from training.embedder import Embedder
from training.ensemble import combine_checkpoint_files
from training.evaluation.retrieval import retrieval_metrics
from training.losses import TripletLoss
from training.train import TrainConfig, train

log = logging.getLogger("train_beyond")

# "contrastive" (the strongest plain loss of the issue-3 table) is a reference row, not in
# the default set
# "notree" is HTL without its tree (the same all-triplet loss with the constant margin β and
# P x K batches): what the tree adds
METHODS = ("baseline", "htl", "mining", "contrastive", "notree")


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
    """Train one row's model through ``training.train.train``; returns its path and timings."""
    cfg = {
        "baseline": replace(cfg, loss="triplet", miner="batch-hard", sampler="pk"),
        "htl": replace(cfg, loss="htl", miner="all-triplets", sampler="hierarchical",
                       margin=args.htl_beta),
        "mining": replace(cfg, loss="triplet", miner="batch-hard", sampler="hard-negatives"),
        "contrastive": replace(cfg, loss="contrastive", miner="all-pairs", sampler="pk",
                               margin=0.5),
        "notree": replace(cfg, loss="triplet", miner="all-triplets", sampler="pk",
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
    return {"path": str(path), "wall_s": wall if wall is not None else loop + refresh_s,
            "loop_s": loop, "refresh_s": refresh_s,
            # epoch-start refreshes run outside the loop's epoch timer: add them back
            "refresh_fraction": refresh_s / (loop + refresh_s) if loop else float("nan")}


def evaluate(path: str | Path, test_s: list[Sample]) -> dict[str, float]:
    emb = Embedder.from_checkpoint(path).embed_paths([s.path for s in test_s], batch_size=128)
    return retrieval_metrics(emb, [s.label for s in test_s], nmi=False)


def summary(rows: list[dict]) -> tuple[float, float]:
    r1 = np.array([r["metrics"]["recall@1"] for r in rows]) * 100
    return float(r1.mean()), float(r1.std(ddof=1)) if len(r1) > 1 else float("nan")


def _save(args, results: dict) -> None:
    """Results so far as JSON (a long run that dies keeps its finished rows)."""
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results},
                                              indent=1, default=str))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(data_root() / "cub100"))
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
    p.add_argument("--ae-epochs", type=int, default=1)
    p.add_argument("--ensemble-of", default="baseline", choices=METHODS,
                   help="the recipe whose seeds make up the ensemble row")
    p.add_argument("--reuse", action="store_true",
                   help="evaluate an existing <out>/<row>_s<seed>/model.pt instead of training")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    split = load_split("cub", args.data)
    shorter = round(args.input_size * split.resize_ratio)
    cache = Path(args.cache) / f"cub100_{shorter}"
    train_s = cache_images(split.train, cache, shorter)
    test_s = cache_images(split.test, cache, shorter)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = TrainConfig(
        data=args.data, out="", arch="smallcnn", arch_kwargs={"width": args.width},
        embedding_dim=args.embedding_dim, input_size=args.input_size, resize_size=shorter,
        augmentation="crop", epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        p=args.p, k=args.k, lr=args.lr, val_fraction=0.0, num_workers=0, tensorboard=False,
        norms_every=10_000, calibration_pairs=500, val_max_images=300,
        tree_levels=args.tree_levels,
        refresh_max_per_class=args.refresh_max_per_class)
    wanted = args.rows.split(",")
    results: dict[str, list[dict]] = {}
    for method in [m for m in METHODS if m in wanted]:
        for seed in (seeds if method != "mining" else seeds[:1]):
            cfg = replace(base, seed=seed, out=str(out / f"{method}_s{seed}"),
                          name=f"{method}-s{seed}")
            row = run(method, cfg, train_s, args)
            row["metrics"] = evaluate(row["path"], test_s)
            row["seed"] = seed
            results.setdefault(method, []).append(row)
            _save(args, results)
            log.info("%s seed %d: R@1 %.4f (%.0f s)", method, seed,
                     row["metrics"]["recall@1"], row["wall_s"])
    if "ensemble" in wanted:
        of = args.ensemble_of
        members = list(results.get(of, []))
        for seed in range(100):  # more members of the same recipe, other seeds
            if len(members) == 3:
                break
            if seed in [m["seed"] for m in members]:
                continue
            cfg = replace(base, seed=seed, out=str(out / f"{of}_s{seed}"), name=f"{of}-s{seed}")
            members.append({**run(of, cfg, train_s, args), "seed": seed})
        paths = [m["path"] for m in members]
        ens = save_checkpoint(out / f"ensemble3_{of}" / "model.pt",
                              combine_checkpoint_files(paths, name=f"ensemble3-{of}"))
        results["ensemble"] = [{"path": str(ens), "metrics": evaluate(ens, test_s), "of": of,
                                "wall_s": sum(m["wall_s"] for m in members),
                                "members": [m["seed"] for m in members],
                                "member_r1": [evaluate(m["path"], test_s)["recall@1"]
                                              if "metrics" not in m else
                                              m["metrics"]["recall@1"] for m in members]}]
        _save(args, results)
    if "ae" in wanted:
        best = max((m for m in ("baseline", "htl") if m in results),
                   key=lambda m: summary(results[m])[0], default="baseline")
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
        cfg = replace(base, seed=seeds[0], out=str(out / f"ae_{best}_s{seeds[0]}"),
                      name=f"ae-{best}")
        row = run(best, replace(cfg, init_from_autoencoder=str(ae)), train_s, args)
        row.update(metrics=evaluate(row["path"], test_s), seed=seeds[0], ae_s=ae_s, loss=best)
        results["ae"] = [row]
        _save(args, results)

    budget = (f"smallcnn width {args.width}, {args.input_size} px, {args.embedding_dim}-d, "
              f"{args.epochs} epochs x {args.steps_per_epoch or 'one pass'} steps of "
              f"{args.p}x{args.k} images, AdamW lr {args.lr}")
    print(f"\nCUB-100, train classes 0-49 ({len(train_s)} images), test 50-99 "
          f"({len(test_s)} images, every image queries all others); {budget}\n")
    print("| row | seeds | R@1 (mean ± sd) | R@2 | R@4 | R@8 | MAP@R | train s/run | refresh share |")
    print("|---|---|---|---|---|---|---|---|---|")
    names = {"baseline": "triplet + batch-hard (P x K)", "htl": "HTL (tree sampler + tree margin)",
             "mining": "triplet + batch-hard, FAISS-mined batches",
             "contrastive": "contrastive (m=0.5, all pairs; reference)",
             "notree": "HTL without the tree (all triplets, margin β, P x K)",
             "ensemble": "ensemble of 3 x {of}",
             "ae": "AE-pretrained + {loss}"}
    for key, rows in results.items():
        mean, sd = summary(rows)
        m = {k: np.mean([r["metrics"][k] for r in rows]) * 100
             for k in ("recall@2", "recall@4", "recall@8", "map@r")}
        frac = np.mean([r.get("refresh_fraction", np.nan) for r in rows])
        label = names[key].format(loss=rows[0].get("loss", ""), of=rows[0].get("of", ""))
        seeds_txt = ",".join(str(r.get("seed", "")) for r in rows) if key != "ensemble" \
            else "members " + ",".join(map(str, rows[0]["members"])) + " (R@1 " + \
            ", ".join(f"{r * 100:.1f}" for r in rows[0]["member_r1"]) + ")"
        r1 = f"{mean:.1f} ± {sd:.1f}" if not np.isnan(sd) else f"{mean:.1f}"
        share = f"{frac * 100:.0f}%" if not np.isnan(frac) else "-"
        print(f"| {label} | {seeds_txt} | {r1} | {m['recall@2']:.1f} | {m['recall@4']:.1f} | "
              f"{m['recall@8']:.1f} | {m['map@r']:.1f} | "
              f"{np.mean([r['wall_s'] for r in rows]):.0f} | {share} |")
    if "ae" in results:
        print(f"\nAE pre-training ({args.ae_epochs} epochs on the training-class images): "
              f"{results['ae'][0]['ae_s']:.0f} s, not counted in the row's train time")
    _save(args, results)


if __name__ == "__main__":
    main()
