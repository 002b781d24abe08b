"""Command-line entry points of the training package: train, embed, eval."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from training.evaluation import cli as evaluation_cli
from training.losses import LOSSES
from training.miners import MINERS

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from training.backbones import BACKBONES

    p = sub.add_parser("train", help="train an embedding network (Siamese, shared weights)",
                       description="Train an embedding network on an image folder "
                                   "(<data>/<class>/<image>) with a metric-learning loss; writes "
                                   "<out>/model.pt (calibrated threshold), last.pt, metrics.csv.")
    p.add_argument("--data", required=True, help="image folder, one sub-folder per class")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--arch", default="smallcnn", choices=sorted(BACKBONES))
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--input-size", type=int, default=64, help="square input side in pixels")
    p.add_argument("--loss", default="triplet", choices=sorted(LOSSES))
    p.add_argument("--miner", default=None, choices=sorted(MINERS),
                   help="in-batch miner (default: all-pairs for contrastive, batch-hard for triplet)")
    p.add_argument("--margin", type=float, default=None,
                   help="loss margin (default 1.0 contrastive, 0.2 triplet)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--p", type=int, default=16, help="classes per batch")
    p.add_argument("--k", type=int, default=4, help="images per class per batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrained", default=None, help="local backbone weights file (no downloads)")
    p.add_argument("--name", default="model", help="model name reported by the service")
    p.set_defaults(func=_train)

    e = sub.add_parser("embed", help="embed a list of images into an .npy matrix",
                       description="Embed the images listed in FILE (one path per line) and write "
                                   "one float32 row per line, in order, to OUT.npy (L2-normalised "
                                   "for cosine models).")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--list", required=True, dest="list_file", help="text file, one image path per line")
    e.add_argument("--output", required=True, help="output .npy path")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--num-workers", type=int, default=2)
    e.set_defaults(func=_embed)

    evaluation_cli.register(sub)


def _train(args: argparse.Namespace) -> int:
    from training.train import TrainConfig, train

    cfg = TrainConfig(data=args.data, out=args.out, arch=args.arch,
                      embedding_dim=args.embedding_dim, input_size=args.input_size,
                      loss=args.loss, miner=args.miner, margin=args.margin, epochs=args.epochs,
                      steps_per_epoch=args.steps_per_epoch, p=args.p, k=args.k, lr=args.lr,
                      num_workers=args.num_workers, seed=args.seed, pretrained=args.pretrained,
                      name=args.name)
    path = train(cfg)
    print(f"wrote {path}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from training.embedder import Embedder

    lines = [ln.strip() for ln in Path(args.list_file).read_text().splitlines()]
    paths = [ln for ln in lines if ln]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed image(s) not found, first: {missing[0]}")
    emb = Embedder.from_checkpoint(args.checkpoint)
    vectors = emb.embed_paths(paths, batch_size=args.batch_size, num_workers=args.num_workers,
                              progress=True)
    if emb.spec.normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    np.save(args.output, vectors.astype(np.float32))
    print(f"wrote {args.output}: {vectors.shape[0]} x {vectors.shape[1]} float32")
    return 0
