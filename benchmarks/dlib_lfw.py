"""Benchmark: LFW View 2 (10-fold) accuracy of dlib face-model checkpoints under each face alignment."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import file_sha256, load_checkpoint
from training.evaluation.lfw import load_view2, pair_distances_by_path, view2_accuracy
from training.models.embedder import Embedder
from training.settings import data_root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint(s) to evaluate (repeatable), e.g. from imgsim import-dlib")
    p.add_argument("--data", default=str(data_root()))
    p.add_argument("--align", default="dlib5,lfw-fixed",
                   help="comma-separated face aligners to compare (dlib5, lfw-fixed)")
    p.add_argument("--folds", default="1-10", help="View 2 folds, e.g. 1-10 or 6-10")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--cache", default="var/dlib_lfw_cache",
                   help="embeddings are kept here (per checkpoint hash and alignment), so that "
                        "other fold subsets are evaluated without embedding again")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    lo, _, hi = args.folds.partition("-")
    folds = list(range(int(lo), int(hi or lo) + 1))
    pairs = load_view2(args.data).select(folds)
    paths = pairs.unique_paths()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for ckpt_path in args.checkpoint:
        ckpt = load_checkpoint(ckpt_path)
        model = ckpt.build().to(memory_format=torch.channels_last)
        for align in args.align.split(","):
            spec = replace(ckpt.spec, face_align=align)
            sha = file_sha256(ckpt_path)
            emb = Embedder(model, spec, checkpoint_sha256=sha)
            t0 = time.perf_counter()
            npy = cache / f"{sha[:12]}_{align}.npz"
            cached = dict(np.load(npy)) if npy.is_file() else {}
            todo = [q for q in paths if q not in cached]
            if todo:
                vecs = emb.embed_paths(todo, batch_size=32, num_workers=args.num_workers,
                                       progress=True)
                cached.update(zip(todo, vecs, strict=True))
                np.savez(npy, **cached)
            vectors = np.stack([cached[q] for q in paths])
            dist = pair_distances_by_path(pairs, paths, vectors)
            res = view2_accuracy(dist, pairs.same, pairs.fold, folds)
            res.update(checkpoint=Path(ckpt_path).name, align=align,
                       seconds=time.perf_counter() - t0)
            rows.append(res)
            logging.info("%s %s: %.4f", ckpt_path, align, res["accuracy_mean"])
    print(f"\nLFW View 2, folds {args.folds} ({rows[0]['n_pairs']} pairs), threshold per fold "
          "chosen on the other folds\n")
    print("| checkpoint | alignment | accuracy (mean ± std) | AUC | TAR@FAR=1e-3 | EER | time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['align']} | {100 * r['accuracy_mean']:.2f} ± "
              f"{100 * r['accuracy_std']:.2f}% | {r['auc']:.4f} | {r['tar_at_far_1e-3']:.3f} | "
              f"{r['eer']:.4f} | {r['seconds']:.0f} s |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
