"""Calibration (issue 16): the unit-vector threshold of the dlib model that reproduces dlib's
raw 0.6 verdicts, chosen on LFW View 1 pairsDevTrain and checked on pairsDevTest."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import load_checkpoint
from training.dlib.threshold import DLIB_RAW_THRESHOLD, agreeing_unit_threshold, l2_normalise
from training.evaluation.lfw import IMAGES_DIR, read_lfw_pairs, resolve_lfw_root
from training.models.backbones import build_model
from training.models.embedder import Embedder
from training.settings import data_root


def raw_descriptors(ckpt_path: str, paths: list[str], align: str) -> np.ndarray:
    """(n, 128) raw dlib descriptors (the model without its L2 normalisation)."""
    ckpt = load_checkpoint(ckpt_path)
    spec = replace(ckpt.spec, metric="euclidean", face_align=align)
    model = build_model(spec)
    model.load_state_dict(ckpt.state_dict)
    return Embedder(model, spec).embed_paths(paths, batch_size=32, num_workers=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="var/dlib.pt")
    p.add_argument("--data", default=str(data_root()))
    p.add_argument("--align", default="dlib5")
    p.add_argument("--cache", default="var/dlib_unit_threshold.npz")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(2)
    root = resolve_lfw_root(args.data)
    train = read_lfw_pairs(root / "pairsDevTrain.txt", root / IMAGES_DIR)
    test = read_lfw_pairs(root / "pairsDevTest.txt", root / IMAGES_DIR)
    paths = sorted(set(train.unique_paths()) | set(test.unique_paths()))
    cache = Path(args.cache)
    if cache.is_file():
        emb = np.load(cache)["emb"]
    else:
        emb = raw_descriptors(args.checkpoint, paths, args.align)
        np.savez(cache, emb=emb)
    row = {q: i for i, q in enumerate(paths)}
    out = {"median_norm": float(np.median(np.linalg.norm(emb, axis=1)))}
    for name, pairs in (("pairsDevTrain", train), ("pairsDevTest", test)):
        a = emb[[row[q] for q in pairs.paths_a]]
        b = emb[[row[q] for q in pairs.paths_b]]
        if name == "pairsDevTrain":
            thr, agree = agreeing_unit_threshold(a, b, DLIB_RAW_THRESHOLD)
            out["unit_threshold"] = thr
        raw_same = np.linalg.norm(a - b, axis=1) <= DLIB_RAW_THRESHOLD
        unit_same = np.linalg.norm(l2_normalise(a) - l2_normalise(b), axis=1) <= thr
        ratio = DLIB_RAW_THRESHOLD / out["median_norm"]
        out[name] = {"pairs": len(pairs), "same_verdicts": float((raw_same == unit_same).mean()),
                     "same_verdicts_ratio_rule": float((raw_same == (np.linalg.norm(
                         l2_normalise(a) - l2_normalise(b), axis=1) <= ratio)).mean()),
                     "raw_accuracy": float((raw_same == pairs.same).mean()),
                     "unit_accuracy": float((unit_same == pairs.same).mean())}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
