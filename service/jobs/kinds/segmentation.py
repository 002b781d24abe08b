"""Segmentation job kinds: segment-train, segment-predict, segment-eval (run by the job worker)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from service.jobs.context import JobContext
from service.jobs.params import JobKind, param
from training.segmentation.train import SegTrainConfig, default_isbi_dir


@dataclass(frozen=True)
class SegTrainParams(SegTrainConfig):
    """segment-train: SegTrainConfig's fields; ``out`` defaults to the job's folder."""

    out: str = param("", "folder of the checkpoint (default: the job's own folder)")


def run_train(p: SegTrainParams, ctx: JobContext) -> None:
    from training.checkpoint import load_seg_checkpoint
    from training.segmentation.train import train_segmenter

    cfg = replace(p, out=p.out or str(ctx.out_dir), data=_data(p.data, ctx))
    path = train_segmenter(SegTrainConfig(**cfg.__dict__), progress=ctx.progress)
    ctx.add_artifact(path, "segmentation checkpoint")
    metrics = load_seg_checkpoint(path).metrics
    ctx.report.table([{"metric": k, "value": v} for k, v in _flat(metrics).items()],
                     "training and held-out validation metrics")
    m = ctx.path("metrics.json")
    m.write_text(json.dumps(metrics, indent=2))
    ctx.add_artifact(m, "metrics")


@dataclass(frozen=True)
class SegPredictParams:
    checkpoint: str = param(help="segmentation checkpoint (from a segment-train job)")
    images: tuple[str, ...] = param((), "image files to segment; empty: the ISBI test slices")
    data: str = param("", "ISBI 2012 folder when 'images' is empty (default: <data root>/isbi2012)")
    threshold: float = param(0.5, "membrane probability above which a pixel is membrane, in (0, 1)")
    tile: int = param(256, "tile size of overlap-tile inference (pixels)")
    margin: int = param(32, "context margin around each tile (pixels)")
    tta: bool = param(False, "average the 8 flips/rotations (8x slower)")


def run_predict(p: SegPredictParams, ctx: JobContext) -> None:
    from training.segmentation.predict import predict_files

    images = list(p.images) or sorted(
        (Path(_data(p.data, ctx)) / "test").glob("*.png"), key=lambda f: int(f.stem))
    rows = predict_files(p.checkpoint, images, ctx.out_dir, threshold=p.threshold, tile=p.tile,
                         margin=p.margin, tta=p.tta, progress=ctx.progress)
    for r in rows:
        ctx.add_artifact(r["mask"], f"{r['name']}: predicted mask (black = membrane)",
                         in_report=False)
        ctx.add_artifact(r["overlay"], f"{r['name']}: predicted membrane in red")


@dataclass(frozen=True)
class SegEvalParams:
    checkpoint: str = param(help="segmentation checkpoint (from a segment-train job)")
    slices: str = param("20-23", "labelled slices to score, e.g. 20-23 or 0,5,7")
    data: str = param("", "ISBI 2012 folder (default: <data root>/isbi2012)")
    threshold: float = param(0.5, "membrane probability above which a pixel is membrane, in (0, 1)")
    tile: int = param(256, "tile size of overlap-tile inference (pixels)")
    margin: int = param(32, "context margin around each tile (pixels)")
    tta: bool = param(False, "average the 8 flips/rotations (8x slower)")
    grow_cells: bool = param(
        False, "also the Rand error once predicted cells grow over predicted membrane")


def run_eval(p: SegEvalParams, ctx: JobContext) -> None:
    from training.segmentation.predict import evaluate_slices

    summary, rows = evaluate_slices(p.checkpoint, _data(p.data, ctx), p.slices, ctx.out_dir,
                                    threshold=p.threshold, tile=p.tile, margin=p.margin,
                                    tta=p.tta, grow_cells=p.grow_cells, progress=ctx.progress)
    ctx.report.table([{k: v for k, v in r.items() if k != "overlay"} for r in rows],
                     "per held-out slice")
    ctx.report.table([summary], "mean over slices")
    for r in rows:
        ctx.add_artifact(r["overlay"], f"slice {r['slice']}: red = predicted membrane, "
                                       f"blue = missed membrane")
    m = ctx.path("scores.json")
    m.write_text(json.dumps({"mean": summary, "slices": rows}, indent=2))
    ctx.add_artifact(m, "scores")


def _data(data: str, ctx: JobContext) -> str:
    if data:
        return data
    if ctx.defaults.data_root:
        return os.path.join(ctx.defaults.data_root, "isbi2012")
    return default_isbi_dir()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# The kinds of this module; service.jobs.registry.load_builtin_kinds registers them.
KINDS = [
    JobKind("segment-train", SegTrainParams, run_train,
            "train a U-Net or SegNet on ISBI 2012 slices and score held-out slices"),
    JobKind("segment-predict", SegPredictParams, run_predict,
            "segment images with a trained segmenter: masks, probability maps, overlays"),
    JobKind("segment-eval", SegEvalParams, run_eval,
            "score a segmenter on labelled ISBI slices: pixel error, foreground IoU, Rand error"),
]
