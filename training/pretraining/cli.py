"""`imgsim pretrain` (autoencoder pre-training) and `imgsim ensemble` (several checkpoints into one)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "pretrain", help="pre-train an embedding backbone as a (variational) autoencoder",
        description="Train a convolutional autoencoder (or, with --variational, a VAE) on "
                    "unlabelled images; its encoder is an embedding backbone, so the result "
                    "initialises `imgsim train --init-from-autoencoder OUT/autoencoder.pt`. "
                    "Writes OUT/autoencoder.pt, metrics.csv and reconstructions.png (inputs on "
                    "top, reconstructions below). Give it only images the run may see: the "
                    "training split, never test images (--exclude removes a list of paths).",
        arguments=_pretrain_arguments)  # added when used (imgsim.cli.CommandParser): BACKBONES imports torch
    sub.add_parser(
        "ensemble", help="combine trained checkpoints into one ensemble checkpoint",
        description="Put several embedding checkpoints (same input size and normalisation) into "
                    "one checkpoint whose embedding is the members' embeddings concatenated and "
                    "re-normalised; it loads wherever a checkpoint does (embed, index, serve). "
                    "With --calibrate-data the ensemble gets its own verification threshold.",
        arguments=_ensemble_arguments)


def _pretrain_arguments(p: argparse.ArgumentParser) -> None:
    from training.models.backbones import BACKBONES

    p.add_argument("--data", default=None, help="image folder, scanned recursively (labels unused)")
    p.add_argument("--list", dest="list_file", default=None,
                   help="text file with one image path per line (with or instead of --data)")
    p.add_argument("--exclude", dest="exclude_file", default=None,
                   help="text file of image paths the run must not see (e.g. the test split)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--arch", default="smallcnn", choices=sorted(BACKBONES),
                   help="backbone used as the encoder (must match the later `train --arch`)")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--variational", action="store_true", help="a VAE instead of a plain AE")
    p.add_argument("--latent-channels", type=int, default=64)
    p.add_argument("--beta", type=float, default=1.0, help="VAE: weight of the KL term")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-images", type=int, default=None, help="random subset of this size")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_pretrain)


def _ensemble_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--members", nargs="+", required=True, help="member checkpoint files")
    e.add_argument("--out", required=True, help="output checkpoint path")
    e.add_argument("--name", default="ensemble", help="model name reported by the service")
    e.add_argument("--calibrate-data", default=None,
                   help="labelled image folder (<dir>/<class>/<image>) of held-out classes for "
                        "the threshold")
    e.set_defaults(func=_ensemble)


def _pretrain(args: argparse.Namespace) -> int:
    from training.pretraining.autoencoder import PretrainConfig, pretrain

    for name in ("epochs", "batch_size", "input_size", "latent_channels"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    cfg = PretrainConfig(out=args.out, data=args.data, list_file=args.list_file,
                         exclude_file=args.exclude_file, arch=args.arch,
                         input_size=args.input_size, latent_channels=args.latent_channels,
                         variational=args.variational, beta=args.beta, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, num_workers=args.num_workers,
                         seed=args.seed, max_images=args.max_images)
    path = pretrain(cfg)
    print(f"wrote {path} and {path.parent / 'reconstructions.png'}")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from training.checkpoint import save_checkpoint
    from training.data.folders import list_image_folder
    from training.models.ensemble import calibrate_ensemble, combine_checkpoint_files

    ckpt = combine_checkpoint_files(args.members, name=args.name)
    if args.calibrate_data:
        samples = list_image_folder(args.calibrate_data)
        ckpt = calibrate_ensemble(ckpt, [s.path for s in samples], [s.label for s in samples])
    path = save_checkpoint(args.out, ckpt)
    thr = f", threshold {ckpt.spec.threshold:.4f}" if ckpt.spec.threshold is not None else ""
    print(f"wrote {path}: {len(args.members)} members, {ckpt.spec.embedding_dim}-d{thr}")
    return 0
