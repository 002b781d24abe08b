"""Command-line entry points of the training package: train, models, embed, eval."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training import checkpoint_cli
from training.evaluation import cli as evaluation_cli

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    # ``arguments=``: each command's flags are added when it is used (imgsim.cli.CommandParser),
    # so that `imgsim --help` and the client commands never import torch for these choices
    sub.add_parser(
        "train", help="train an embedding network (Siamese, shared weights)",
        argument_default=argparse.SUPPRESS,
        description="Train an embedding network with a metric-learning loss and an in-batch "
                    "miner on a class-disjoint split of a dataset. Writes <out>/model.pt (best "
                    "validation weights, calibrated thresholds), last.pt and best.pt every "
                    "epoch, metrics.csv, norms.csv (per-layer weight and gradient norms), "
                    "loss.png and TensorBoard logs under <out>/tb. Settings come from --config "
                    "(TOML, TrainConfig field names) and flags; flags win. Under `torchrun "
                    "--nproc_per_node N -m imgsim.cli train ...` it trains one model with "
                    "DistributedDataParallel (gloo on CPUs, NCCL on GPUs); rank 0 writes.",
        arguments=_train_arguments)
    sub.add_parser("models", help="registered backbones: parameters and FLOPs",
                   description="Table of the registered backbones (with an embedding head) "
                               "and their parameter counts and forward FLOPs for one image "
                               "at the given input size (torch FlopCounterMode; a "
                               "multiply-add counts as 2 FLOPs).",
                   arguments=_models_arguments)
    sub.add_parser("embed", help="embed a list of images into an .npy matrix",
                   description="Embed the images listed in FILE (one path per line) and write "
                               "one L2-normalised float32 row per line, in order, to OUT.npy "
                               "(every checkpoint).",
                   arguments=_embed_arguments)
    evaluation_cli.register(sub)
    checkpoint_cli.register(sub)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from training.data.datasets import FORMATS
    from training.data.transforms import AUGMENTATIONS
    from training.distances import DISTANCES
    from training.engine.optim import OPTIMIZERS, SCHEDULES
    from training.engine.train import SAMPLERS
    from training.losses import LOSSES
    from training.miners.in_batch import MINERS
    from training.models.backbones import BACKBONES

    d = _train_defaults()
    p.add_argument("--config", help="TOML file of TrainConfig settings (flags override it)")
    p.add_argument("--format", choices=sorted(FORMATS),
                   help="folder: <data>/<class>/<image>; cub: CUB layout, classes 0-49 train; "
                        f"lfw: people of pairs.txt folds 1-5 train (default {d['format']})")
    p.add_argument("--data", help="dataset folder")
    p.add_argument("--lfw-train-folds", type=evaluation_cli.parse_folds,
                   help="lfw: train on the people of these pairs.txt folds (default 1-5; test "
                        "on the others)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--arch", choices=sorted(BACKBONES), help=f"backbone (default {d['arch']})")
    p.add_argument("--embedding-dim", type=int, help=f"default {d['embedding_dim']}")
    p.add_argument("--input-size", type=int,
                   help=f"square input side in pixels (default {d['input_size']})")
    p.add_argument("--resize-size", type=int,
                   help="eval resize of the shorter side before the centre crop (default: "
                        "input size x the dataset's ratio: 2.0 for LFW faces, 1.14 for CUB)")
    p.add_argument("--metric", choices=["cosine", "euclidean"],
                   help=f"cosine: L2-normalised embeddings (default {d['metric']})")
    p.add_argument("--loss", choices=sorted(LOSSES), help=f"default {d['loss']}")
    p.add_argument("--miner", choices=sorted(MINERS),
                   help="in-batch miner (default: all-pairs for contrastive, batch-hard for "
                        "triplet, adjacent-pairs with --sampler pairs)")
    p.add_argument("--margin", type=float, help="loss margin (default 1.0 contrastive, 0.2 triplet)")
    p.add_argument("--squared-margin", action="store_true",
                   help="contrastive: max(0, m²-d²) instead of max(0, m-d)²")
    p.add_argument("--distance", choices=sorted(DISTANCES), help=f"default {d['distance']}")
    p.add_argument("--sampler", choices=list(SAMPLERS),
                   help="pk: P classes x K images per batch; pairs: genuine/impostor pairs; "
                        "hierarchical: anchor classes and their nearest classes in the class "
                        "tree (HTL); hard-negatives: anchors and the classes of their "
                        f"FAISS-mined hardest negatives (default {d['sampler']})")
    p.add_argument("--positive-fraction", type=float,
                   help=f"pairs sampler: share of genuine pairs (default {d['positive_fraction']})")
    p.add_argument("--epochs", type=int, help=f"default {d['epochs']}")
    p.add_argument("--steps-per-epoch", type=int,
                   help="batches per epoch (default: as many as cover the data once)")
    p.add_argument("--p", type=int, help=f"classes per batch (default {d['p']})")
    p.add_argument("--k", type=int, help=f"images per class per batch (default {d['k']})")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help=f"default {d['optimizer']}")
    p.add_argument("--lr", type=float, help=f"default {d['lr']}")
    p.add_argument("--weight-decay", type=float, help=f"default {d['weight_decay']}")
    p.add_argument("--schedule", choices=list(SCHEDULES),
                   help=f"per-step LR schedule (default {d['schedule']})")
    p.add_argument("--warmup-steps", type=int, help="linear LR warm-up steps (default 0)")
    p.add_argument("--grad-clip", type=float,
                   help=f"clip the total gradient norm (default {d['grad_clip']}; 0: off)")
    p.add_argument("--val-fraction", type=float,
                   help=f"training classes held out for validation (default {d['val_fraction']})")
    p.add_argument("--val-metric", help=f"selects best.pt (default {d['val_metric']})")
    p.add_argument("--target-far", type=float,
                   help=f"second calibrated threshold at this FAR (default {d['target_far']})")
    p.add_argument("--num-workers", type=int, help=f"DataLoader workers (default {d['num_workers']})")
    p.add_argument("--seed", type=int, help=f"default {d['seed']}")
    p.add_argument("--pretrained", help="local backbone weights file (no downloads)")
    p.add_argument("--init", help="start from this checkpoint (its architecture, preprocessing "
                                  "and weights; --arch, --input-size, ... are then ignored)")
    p.add_argument("--name", help="model name reported by the service")
    p.add_argument("--augmentation", choices=sorted(AUGMENTATIONS),
                   help="training augmentation (default: the dataset's: face for LFW, crop else)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the eval transform")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--neighbours", type=int,
                   help="hierarchical / hard-negatives samplers: near classes per anchor class "
                        f"(default {d['neighbours']})")
    p.add_argument("--tree-levels", type=int,
                   help=f"--loss htl / --sampler hierarchical: class tree levels (default "
                        f"{d['tree_levels']}); the tree is written per rebuild to <out>/htl/ "
                        "as JSON and a dendrogram PNG")
    p.add_argument("--refresh-every", type=int,
                   help="rebuild the class tree / re-mine hard negatives every N steps "
                        "(default 0: every epoch)")
    p.add_argument("--refresh-max-per-class", type=int,
                   help="images per class embedded for each rebuild / re-mining (default: all)")
    p.add_argument("--mining-k", type=int,
                   help=f"hard-negatives: other-class neighbours mined per image (default "
                        f"{d['mining_k']})")
    p.add_argument("--init-from-autoencoder",
                   help="initialise the backbone from `imgsim pretrain`'s autoencoder.pt "
                        "(same --arch)")
    p.add_argument("--ensemble", type=int,
                   help="train N members (seeds seed .. seed+N-1) into one ensemble checkpoint "
                        "(default 1: a single model)")
    p.set_defaults(func=_train)


def _models_arguments(m: argparse.ArgumentParser) -> None:
    d = _train_defaults()
    m.add_argument("--input-size", type=int, default=d["input_size"])
    m.add_argument("--embedding-dim", type=int, default=d["embedding_dim"])
    m.add_argument("--config", default=None, help="take input_size/embedding_dim from this TOML")
    m.add_argument("--json", default=None, help="write the table as JSON here")
    m.set_defaults(func=_models)


def _embed_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--list", required=True, dest="list_file", help="text file, one image path per line")
    e.add_argument("--output", required=True, help="output .npy path")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--num-workers", type=int, default=2)
    e.set_defaults(func=_embed)


def _train_defaults() -> dict:
    from dataclasses import MISSING, fields

    from training.engine.train import TrainConfig

    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def _train(args: argparse.Namespace) -> int:
    from training.engine.config import merge_config, read_toml_config
    from training.engine.train import train

    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config",
                                                              "verbose")}
    if "lfw_train_folds" in flags:
        flags["lfw_train_folds"] = tuple(flags["lfw_train_folds"])
    if flags.get("grad_clip") == 0:
        flags["grad_clip"] = None
    file_values = read_toml_config(args.config) if getattr(args, "config", None) else {}
    cfg = merge_config(file_values, flags)
    path = train(cfg)
    print(f"wrote {path}")
    return 0


def _models(args: argparse.Namespace) -> int:
    import json

    from training.models.info import model_table

    size, dim = args.input_size, args.embedding_dim
    if args.config:
        from training.engine.config import read_toml_config

        values = read_toml_config(args.config)
        size, dim = values.get("input_size", size), values.get("embedding_dim", dim)
    rows = model_table(input_size=size, embedding_dim=dim)
    print(f"backbones + {dim}-d head, one {size}x{size} RGB image (FLOPs: multiply-add = 2)")
    print(f"{'arch':<20} {'params':>10} {'GFLOPs':>8}")
    for r in rows:
        print(f"{r['arch']:<20} {r['params'] / 1e6:9.2f}M {r['flops'] / 1e9:8.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"input_size": size, "embedding_dim": dim,
                                               "models": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    import numpy as np

    from training.models.embedder import Embedder

    lines = [ln.strip() for ln in Path(args.list_file).read_text().splitlines()]
    paths = [ln for ln in lines if ln]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed image(s) not found, first: {missing[0]}")
    emb = Embedder.from_checkpoint(args.checkpoint)
    vectors = emb.embed_paths(paths, batch_size=args.batch_size, num_workers=args.num_workers,
                              progress=True)
    # the contract of embed for every checkpoint: unit rows (cosine models' outputs already
    # are; a metric-euclidean model's raw outputs are normalised here, its Verify threshold
    # stays in raw units)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    np.save(args.output, vectors.astype(np.float32))
    print(f"wrote {args.output}: {vectors.shape[0]} x {vectors.shape[1]} float32")
    return 0
