"""`imgsim checkpoint` commands: ``set-face`` attaches a face step (or changes what it does
without a face) to an existing checkpoint, so that indexing and the service both apply it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("checkpoint", help="inspect or change a checkpoint's stored settings",
                       description="Change what a checkpoint's ModelSpec prescribes.")
    csub = c.add_subparsers(dest="checkpoint_command", required=True, metavar="COMMAND")
    csub.add_parser(
        "set-face", help="set the face step (e.g. the Haar face crop) a checkpoint's images get",
        description="Store a face step in the checkpoint's spec (spec.face_align, "
                    "spec.face_on_miss): the one eval transform applies it before resizing, so "
                    "index build, reindex, Upsert and every query (Search, Verify, Embed) get "
                    "it alike. haar-crop cuts the main face (OpenCV's Haar cascade) with a "
                    "margin of a quarter of its size; dlib5, haar5 and lfw-fixed cut aligned "
                    "chips; none removes the step. --on-miss: fallback embeds the whole image "
                    "(the aligners: a fixed chip) when no face is found; require refuses it "
                    "(INVALID_ARGUMENT at the service; indexing leaves it out of the index and "
                    "counts it). The file's sha256 changes: rebuild or reindex the indexes "
                    "built with it, since the service refuses an index of another checkpoint.",
        arguments=_set_face_arguments)


def _set_face_arguments(p: argparse.ArgumentParser) -> None:
    from training.face.aligners import FACE_ALIGNERS
    from training.models.spec import FACE_ON_MISS

    p.add_argument("checkpoint", help="checkpoint file (.pt)")
    p.add_argument("--face", choices=[*sorted(FACE_ALIGNERS), "none"], default=None,
                   help="the face step (default: keep the checkpoint's)")
    p.add_argument("--on-miss", choices=FACE_ON_MISS, default=None,
                   help="without a face: fallback (default for checkpoints that never set it) "
                        "or require")
    p.add_argument("--output", default=None, help="write here instead of over CHECKPOINT")
    p.set_defaults(func=_set_face)


def _set_face(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from training.checkpoint import load_checkpoint, save_checkpoint

    if args.face is None and args.on_miss is None:
        raise ValueError("give --face, --on-miss or both")
    ckpt = load_checkpoint(args.checkpoint)
    spec = ckpt.spec
    if args.face is not None:
        spec = replace(spec, face_align=None if args.face == "none" else args.face)
    if args.on_miss is not None:
        spec = replace(spec, face_on_miss=args.on_miss)
    if spec.face_align == "haar-crop" and spec.in_channels not in (1, 3):
        raise ValueError(f"the Haar crop needs 1 or 3 input channels, not {spec.in_channels}")
    path = save_checkpoint(args.output or args.checkpoint, replace(ckpt, spec=spec))
    print(f"wrote {path}: face step {spec.face_step()} (was {ckpt.spec.face_step()}); rebuild "
          f"or reindex the indexes built with the old file")
    return 0
