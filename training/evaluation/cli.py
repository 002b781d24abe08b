"""`imgsim eval ...`: evaluation protocols on the command line (tables, JSON, plots)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def parse_folds(text: str) -> list[int]:
    """'6-10' or '1,3,5-7' -> sorted fold numbers."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi or lo)
            if a > b or a < 1:
                raise ValueError
            out.update(range(a, b + 1))
    except ValueError:
        raise ValueError(f"bad --folds {text!r}: expected e.g. '6-10' or '1,3,5-7'") from None
    return sorted(out)


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a checkpoint (LFW verification, retrieval)",
                        description="Evaluate a checkpoint with a standard protocol; each "
                                    "subcommand prints a table and can write JSON.")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="PROTOCOL")

    lf = esub.add_parser(
        "lfw", help="LFW View 2 face verification (10-fold, threshold from the other folds)",
        description="LFW View 2: for each test fold the distance threshold is chosen on the other "
                    "folds; prints accuracy mean ± std, ROC AUC, TAR@FAR=1e-3 and EER, without "
                    "and with horizontal-flip test-time augmentation. A model trained on LFW "
                    "people must only be tested on folds whose people it never saw (--folds).")
    lf.add_argument("--checkpoint", required=True)
    lf.add_argument("--data", required=True,
                    help="LFW folder holding pairs.txt and lfw-deepfunneled/ (or its parent)")
    lf.add_argument("--folds", default=None, help="test folds, e.g. 6-10 (default: all 10)")
    lf.add_argument("--json", default=None, help="write the results as JSON here")
    lf.add_argument("--roc-png", default=None, help="write the ROC curves as a PNG here")
    lf.add_argument("--batch-size", type=int, default=64)
    lf.add_argument("--num-workers", type=int, default=2)
    lf.set_defaults(func=_eval_lfw)

    esub.add_parser(
        "retrieval", help="Recall@K, MAP@R and NMI on classes never trained on",
        description="Every test image queries all the others (exact FAISS kNN): Recall@1/2/4/8, "
                    "P@1, MAP@R, R-precision and NMI (k-means, one cluster per class). --format "
                    "cub and lfw evaluate their test split (CUB classes 50-99; LFW people of "
                    "folds 6-10); --format folder evaluates every image of the folder "
                    "(<data>/<class>/<image>), which should hold unseen classes.",
        arguments=_retrieval_arguments)  # added when used: FORMATS imports torch


def _retrieval_arguments(rt: argparse.ArgumentParser) -> None:
    from training.data.datasets import FORMATS

    rt.add_argument("--checkpoint", required=True)
    rt.add_argument("--format", required=True, choices=sorted(FORMATS))
    rt.add_argument("--data", required=True, help="dataset folder")
    rt.add_argument("--split", choices=["test", "train"], default="test",
                    help="cub/lfw: which half to evaluate (default test)")
    rt.add_argument("--no-nmi", action="store_true", help="skip the k-means NMI")
    rt.add_argument("--json", default=None, help="write the results as JSON here")
    rt.add_argument("--batch-size", type=int, default=64)
    rt.add_argument("--num-workers", type=int, default=2)
    rt.set_defaults(func=_eval_retrieval)


def _fmt_row(name: str, r: dict) -> str:
    return (f"{name:<10} {100 * r['accuracy_mean']:6.2f} ± {100 * r['accuracy_std']:5.2f}  "
            f"{r['auc']:.4f}  {100 * r['tar_at_far_1e-3']:6.2f}  {100 * r['eer']:6.2f}  "
            f"{r['n_pairs']:>6}")


def _eval_lfw(args: argparse.Namespace) -> int:
    from training.evaluation.lfw import load_view2, pair_distances_by_path, view2_accuracy
    from training.models.embedder import Embedder

    folds = parse_folds(args.folds) if args.folds else None
    pairs = load_view2(args.data)
    if folds is not None:
        missing = sorted(set(folds) - set(pairs.fold.tolist()))
        if missing:
            raise ValueError(f"--folds names fold(s) {missing} that pairs.txt does not have")
        pairs = pairs.select(folds)
    embedder = Embedder.from_checkpoint(args.checkpoint)
    paths = pairs.unique_paths()
    plain, flipped = embedder.embed_paths_and_flips(paths, batch_size=args.batch_size,
                                                    num_workers=args.num_workers, progress=True)
    results, dists = {}, {}
    for name, emb in [("plain", plain), ("flip_tta", embedder.combine_flips(plain, flipped))]:
        dists[name] = pair_distances_by_path(pairs, paths, emb)
        results[name] = view2_accuracy(dists[name], pairs.same, pairs.fold, folds)
    used = results["plain"]["folds"]
    print(f"LFW View 2, folds {used[0]}-{used[-1]} ({len(used)}), {embedder.model_version}")
    print(f"{'':<10} {'accuracy %':>15}  {'AUC':>6}  {'TAR@1e-3':>6}  {'EER %':>6}  {'pairs':>6}")
    for name, r in results.items():
        print(_fmt_row(name, r))
    if args.json:
        payload = {"checkpoint": str(args.checkpoint), "model": embedder.model_version, **results}
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    if args.roc_png:
        _plot_roc(args.roc_png, {k: (d, pairs.same) for k, d in dists.items()}, results)
        print(f"wrote {args.roc_png}")
    return 0


def _eval_retrieval(args: argparse.Namespace) -> int:
    from training.data.datasets import load_split
    from training.data.folders import list_image_folder
    from training.evaluation.retrieval import evaluate_retrieval
    from training.models.embedder import Embedder

    if args.format == "folder":
        samples = list_image_folder(args.data)
    else:
        split = load_split(args.format, args.data)
        samples = split.test if args.split == "test" else split.train
    if len({s.label for s in samples}) < 2:
        raise ValueError(f"retrieval needs at least two classes; {args.data} has fewer")
    embedder = Embedder.from_checkpoint(args.checkpoint)
    r = evaluate_retrieval(embedder, samples, batch_size=args.batch_size,
                           num_workers=args.num_workers, nmi=not args.no_nmi)
    print(f"retrieval on {args.format} {args.data} ({r['n_queries']} images, "
          f"{r['n_classes']} classes), {embedder.model_version}")
    keys = ["recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "map@r",
            "r_precision"] + (["nmi"] if "nmi" in r else [])
    print("  ".join(f"{k:>11}" for k in keys))
    print("  ".join(f"{100 * r[k]:11.2f}" for k in keys))
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": str(args.checkpoint),
                                               "model": embedder.model_version,
                                               "format": args.format, **r}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _plot_roc(path: str, curves: dict, results: dict) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.evaluation.lfw import roc_points

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (dist, same) in curves.items():
        fpr, tpr = roc_points(dist, same)
        r = results[name]
        ax.plot(np.maximum(fpr, 1e-4), tpr,
                label=f"{name}: acc {100 * r['accuracy_mean']:.1f}%, AUC {r['auc']:.3f}")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("LFW View 2 ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

