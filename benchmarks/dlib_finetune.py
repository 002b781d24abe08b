"""Benchmark: fine-tune the imported dlib face model on LFW people of folds 1-5, test on folds 6-10."""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.data.folders import ImagePaths
from training.data.transforms import eval_transform
from training.distances import get_distance
from training.evaluation.lfw import (
    load_view2,
    pair_distances_by_path,
    person_of,
    resolve_lfw_root,
    view2_accuracy,
)
from training.losses import get_loss
from training.miners.in_batch import MINERS
from training.settings import data_root

TRUNK_BLOCKS = 10  # stem + 3x32 + 4x64 + 3x128 stay frozen; the 256-channel stages and fc train


def trunk_features(model, paths, transform, *, flip: bool, workers: int) -> torch.Tensor:
    """(n, 128, 8, 8) frozen-trunk features of the aligned chips (mirrored when ``flip``)."""
    loader = DataLoader(ImagePaths(paths, transform), batch_size=32, num_workers=workers)
    out = []
    with torch.inference_mode():
        for x, _ in tqdm(loader, desc="trunk", disable=None):
            if flip:
                x = x.flip(3)
            x = x.contiguous(memory_format=torch.channels_last)
            h = torch.nn.functional.max_pool2d(torch.relu(model.stem(x)), 3, 2)
            out.append(model.blocks[:TRUNK_BLOCKS](h).float())
    return torch.cat(out)


def head(model, feats: torch.Tensor) -> torch.Tensor:
    """Trainable part: 256-channel stages, pooling, fc. (n, 128, 8, 8) -> (n, 128)."""
    return model.fc(model.blocks[TRUNK_BLOCKS:](feats).mean(dim=(2, 3)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="var/dlib.pt")
    p.add_argument("--data", default=str(data_root()))
    p.add_argument("--out", default="var/dlib_finetuned.pt")
    p.add_argument("--max-per-person", type=int, default=6)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--p", type=int, default=16)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = random.Random(0)
    ckpt = load_checkpoint(args.checkpoint)
    spec = replace(ckpt.spec, face_align="lfw-fixed")
    model = ckpt.build().to(memory_format=torch.channels_last)
    tf = eval_transform(spec)

    pairs = load_view2(args.data)
    train_people = {person_of(q) for q in pairs.select(range(1, 6)).unique_paths()}
    root = resolve_lfw_root(args.data) / "lfw-deepfunneled"
    by_person = {}
    for person in sorted(train_people):
        files = sorted(str(f) for f in (root / person).glob("*.jpg"))
        if len(files) >= 2:
            by_person[person] = rng.sample(files, min(len(files), args.max_per_person))
    paths = [f for fs in by_person.values() for f in fs]
    labels = torch.tensor([i for i, fs in enumerate(by_person.values()) for _ in fs])
    logging.info("training on %d images of %d people (folds 1-5)", len(paths), len(by_person))
    t0 = time.perf_counter()
    feats = torch.cat([trunk_features(model, paths, tf, flip=f, workers=args.workers)
                       for f in (False, True)])
    labels = torch.cat([labels, labels])
    t_feat = time.perf_counter() - t0

    loss_fn = get_loss("triplet", margin=args.margin, distance=get_distance("l2"))
    miner = MINERS["batch-hard"]()
    params = [*model.blocks[TRUNK_BLOCKS:].parameters(), *model.fc.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    idx_by = defaultdict(list)
    for i, y in enumerate(labels.tolist()):
        idx_by[y].append(i)
    classes = sorted(idx_by)
    model.train()
    t0, losses = time.perf_counter(), []
    for _ in tqdm(range(args.steps), desc="fine-tune", disable=None):
        batch = [i for c in rng.sample(classes, args.p) for i in rng.sample(idx_by[c], args.k)]
        b = torch.tensor(batch)
        emb = head(model, feats[b])
        loss = loss_fn(emb, labels[b], miner(emb, labels[b]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    t_train = time.perf_counter() - t0
    model.eval()
    save_checkpoint(args.out, Checkpoint(replace(spec, name="dlib_face_resnet_v1_lfw15"),
                                         model.state_dict(), config=vars(args)))

    test = pairs.select(range(6, 11))
    test_paths = test.unique_paths()
    t0 = time.perf_counter()
    test_feats = trunk_features(model, test_paths, tf, flip=False, workers=args.workers)
    rows = []
    with torch.inference_mode():
        tuned = head(model, test_feats).numpy()
        base_model = ckpt.build()
        base = head(base_model, test_feats).numpy()
    for name, emb in (("imported", base), ("fine-tuned", tuned)):
        d = pair_distances_by_path(test, test_paths, emb)
        rows.append((name, view2_accuracy(d, test.same, test.fold, range(6, 11))))
    t_eval = time.perf_counter() - t0
    print(f"\nFine-tuning on LFW people of folds 1-5 ({len(paths)} images x2 flips, "
          f"{len(by_person)} people), tested on folds 6-10 ({len(test)} pairs, lfw-fixed crop); "
          f"{args.steps} steps of {args.p}x{args.k}, triplet batch-hard m={args.margin}, "
          f"lr {args.lr}, trunk frozen; features {t_feat:.0f} s, training {t_train:.0f} s, "
          f"eval {t_eval:.0f} s; loss {np.mean(losses[:20]):.4f} -> {np.mean(losses[-20:]):.4f}\n")
    print("| model | accuracy folds 6-10 (mean ± std) | AUC | TAR@FAR=1e-3 | EER |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}% | "
              f"{r['auc']:.4f} | {r['tar_at_far_1e-3']:.3f} | {r['eer']:.4f} |")



if __name__ == "__main__":
    main()
