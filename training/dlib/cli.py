"""`imgsim import-dlib`: turn dlib's face recognition ResNet into an imgsim checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "import-dlib", help="import dlib's face ResNet (.dat) as an imgsim checkpoint",
        description="Read dlib_face_recognition_resnet_model_v1.dat (from the installed "
                    "face_recognition_models package, or --dat) with a pure-Python reader, fold "
                    "its affine layers into the convolutions and write a checkpoint that "
                    "embed, eval, index and serve use like any other: 150x150 face chips, "
                    "(rgb - mean) / 256, 128-d L2-normalised descriptors compared by Euclidean "
                    "distance (dlib's raw 0.6 threshold converted to unit vectors).",
        arguments=_arguments)  # added when used (imgsim.cli.CommandParser): the aligners import torch


def _arguments(p: argparse.ArgumentParser) -> None:
    from training.dlib.threshold import DLIB_UNIT_THRESHOLD
    from training.face.aligners import FACE_ALIGNERS

    p.add_argument("--output", required=True, help="checkpoint path to write (e.g. var/dlib.pt)")
    p.add_argument("--dat", default=None, help="path of the .dat (default: face_recognition_models')")
    p.add_argument("--face-align", default="mtcnn5", choices=[*sorted(FACE_ALIGNERS), "none"],
                   help="face preprocessing stored in the checkpoint: mtcnn5 = batched MTCNN "
                        "detector (shipped weights) + dlib's 5 landmarks, no dlib needed; "
                        "dlib5 = dlib's HOG detector instead (needs dlib-bin, ~2.5x slower "
                        "path, misses half the faces of 64 px photos); lfw-fixed = fixed crop "
                        "for LFW deep-funneled images; none = inputs are already 150x150 chips")
    p.add_argument("--on-miss", choices=("fallback", "require"), default="fallback",
                   help="an image without a detected face: fallback = the fixed crop, require "
                        "= refused by the service (INVALID_ARGUMENT) and left out of indexes")
    p.add_argument("--threshold", type=float, default=None,
                   help="'same person' at or under this distance between L2-normalised "
                        "descriptors (default: dlib's raw 0.6 converted, "
                        f"{DLIB_UNIT_THRESHOLD})")
    p.add_argument("--dlib-threshold", type=float, default=None,
                   help="the threshold in dlib's units (raw descriptors, dlib's is 0.6), "
                        "converted to unit vectors (training.dlib.threshold)")
    p.add_argument("--name", default="dlib_face_resnet_v1", help="model name reported by the service")
    p.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from training.checkpoint import save_checkpoint
    from training.dlib.importer import import_face_resnet
    from training.dlib.threshold import DLIB_UNIT_THRESHOLD, unit_threshold

    if args.threshold is not None and args.dlib_threshold is not None:
        raise ValueError("give --threshold or --dlib-threshold, not both")
    threshold = (unit_threshold(args.dlib_threshold) if args.dlib_threshold is not None
                 else DLIB_UNIT_THRESHOLD if args.threshold is None else args.threshold)
    if threshold <= 0:
        raise ValueError("the threshold must be positive")
    ckpt = import_face_resnet(args.dat, name=args.name, threshold=threshold,
                              face_align=None if args.face_align == "none" else args.face_align)
    ckpt = replace(ckpt, spec=replace(ckpt.spec, face_on_miss=args.on_miss))
    path = save_checkpoint(args.output, ckpt)
    print(f"wrote {path}: {ckpt.spec.arch}, {ckpt.spec.embedding_dim}-d, "
          f"threshold {ckpt.spec.threshold:.4f} (unit vectors), face step {ckpt.spec.face_step()}")
    return 0
