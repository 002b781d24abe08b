"""Training and evaluation of segmenters on ISBI 2012 slices; self-describing checkpoints."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.checkpoint import SegCheckpoint, save_seg_checkpoint
from training.progress import progress as progress_bar
from training.segmentation.data import (
    AugmentConfig,
    Slice,
    TileSampler,
    load_isbi,
    parse_slices,
)
from training.segmentation.infer import predict_probs
from training.segmentation.metrics import SegScores, mean_scores, score_membranes
from training.segmentation.models import SegModelSpec, build_segmenter
from training.segmentation.weights import border_weights
from training.settings import data_root

log = logging.getLogger(__name__)



def default_isbi_dir() -> str:
    """The ISBI 2012 folder under the shared data root (training.settings), read when asked."""
    return str(data_root() / "isbi2012")


Progress = Callable[[float, str], None]


def _option(default: Any = None, help: str = "") -> Any:
    """A config field with its one-line description (the segment-train job lists it)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SegTrainConfig:
    data: str = _option("", "ISBI 2012 folder (train-volume.tif, train-labels.tif; default "
                            "<data root>/isbi2012)")
    out: str = _option("runs/seg", "folder of model.pt")
    arch: str = _option("unet", "unet | segnet")
    upsampling: str = _option(
        "transposed", "decoder upsampling: transposed | nearest | unpool (segnet)")
    width: int = _option(16, "channels of the first level (doubled at each level)")
    depth: int = _option(4, "number of poolings")
    train_slices: str = _option("0-19", "slices trained on, e.g. 0-19")
    val_slices: str = _option("20-23", "held-out slices scored after training ('' for none)")
    tile: int = _option(128, "training tile size (pixels)")
    batch_size: int = _option(8, "tiles per step")
    steps: int = _option(600, "optimiser steps")
    max_seconds: float | None = _option(
        None, "stop early when this wall time is spent (null: no limit)")
    lr: float = _option(2e-3, "AdamW learning rate")
    weight_decay: float = _option(1e-4, "AdamW weight decay")
    weight_map: str = _option(
        "unet", "pixel weights: none | balance (of the classes) | unet (balance + cell borders)")
    border_w0: float = _option(10.0, "unet weight map: weight w0 of the border term")
    border_sigma: float = _option(5.0, "unet weight map: width sigma of the border term (pixels)")
    augment: bool = _option(True, "elastic deformation, flips and rotations of the tiles")
    elastic_sigma: float = _option(10.0, "smoothness of the elastic deformation (pixels)")
    seed: int = _option(0, "seed of tiles, augmentation and initialisation")
    eval_tile: int = _option(256, "tile size when scoring the held-out slices")
    eval_margin: int = _option(32, "context margin when scoring the held-out slices")
    threads: int | None = _option(
        None, "torch threads (null: torch's default; 1 is fastest on a busy CPU)")


def evaluate(model: nn.Module, slices: list[Slice], *, mean: float, std: float, tile: int = 256,
             margin: int = 32, threshold: float = 0.5, tta: bool = False) -> tuple[SegScores, list]:
    """Overlap-tile prediction of whole labelled slices -> (mean scores, per-slice scores)."""
    per = []
    for s in slices:
        prob = predict_probs(model, s.image, tile=tile, margin=margin, mean=mean, std=std, tta=tta)
        per.append(score_membranes(prob[1], s.mask, threshold=threshold))
    return mean_scores(per), per


WEIGHT_MAPS = ("none", "balance", "unet")


def _weight_maps(cfg: SegTrainConfig, slices: list[Slice]) -> list[np.ndarray] | None:
    if cfg.weight_map not in WEIGHT_MAPS:
        raise ValueError(f"unknown weight map {cfg.weight_map!r}; valid: {', '.join(WEIGHT_MAPS)}")
    if cfg.weight_map == "none":
        return None
    w0 = cfg.border_w0 if cfg.weight_map == "unet" else 0.0
    return [border_weights(s.mask.astype(bool), w0=w0, sigma=cfg.border_sigma) for s in slices]


def train_segmenter(cfg: SegTrainConfig, *, progress: Progress | None = None,
                    slices: tuple[list[Slice], list[Slice]] | None = None) -> Path:
    """Train on random augmented tiles, evaluate on the held-out slices, write <out>/model.pt.

    ``slices`` (train, val) replaces reading ``cfg.data`` (tests pass tiny synthetic slices).
    ``progress(fraction, message)`` is called as training advances; it may raise to cancel.
    """
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if slices is None:
        data = cfg.data or default_isbi_dir()
        train_s = load_isbi(data, parse_slices(cfg.train_slices))
        val_s = load_isbi(data, parse_slices(cfg.val_slices)) if cfg.val_slices else []
        overlap = {s.name for s in train_s} & {s.name for s in val_s}
        if overlap:
            raise ValueError(f"slices {sorted(overlap)} are both training and validation slices")
    else:
        train_s, val_s = slices
    spec = SegModelSpec(arch=cfg.arch, upsampling=cfg.upsampling, width=cfg.width, depth=cfg.depth)
    # channels-last convolutions are about 1.5x faster on CPU for these small widths
    model = build_segmenter(spec).to(memory_format=torch.channels_last)
    aug = AugmentConfig(elastic_sigma=cfg.elastic_sigma) if cfg.augment else None
    sampler = TileSampler(train_s, tile=cfg.tile, augment=aug, seed=cfg.seed,
                          weights=_weight_maps(cfg, train_s))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps,
                                                pct_start=0.1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    losses: list[float] = []
    steps_done = 0
    bar = progress_bar(range(cfg.steps), desc=f"{cfg.arch}/{cfg.upsampling}", unit="step",
                       leave=False)
    model.train()
    for step in bar:
        x, y, wt = sampler.sample(cfg.batch_size)
        x = x.contiguous(memory_format=torch.channels_last)
        loss = (F.cross_entropy(model(x), y, reduction="none") * wt).sum() / wt.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        steps_done = step + 1
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if progress:
                progress(0.9 * steps_done / cfg.steps, f"step {steps_done}/{cfg.steps} "
                         f"loss {np.mean(losses[-20:]):.4f}")
        if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
            log.info("time budget of %.0fs spent after %d steps", cfg.max_seconds, steps_done)
            break
    bar.close()
    train_seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {"steps": steps_done, "train_seconds": train_seconds,
                               "final_loss": float(np.mean(losses[-20:])) if losses else math.nan}
    model = model.to(memory_format=torch.contiguous_format).eval()
    if val_s:
        if progress:
            progress(0.92, f"evaluating on {len(val_s)} held-out slices")
        scores, _ = evaluate(model, val_s, mean=sampler.mean, std=sampler.std,
                             tile=cfg.eval_tile, margin=cfg.eval_margin)
        metrics["val"] = scores.to_dict()
        log.info("val: pixel error %.4f  fg IoU %.4f  Rand error %.4f", scores.pixel_error,
                 scores.foreground_iou, scores.rand_error)
    ckpt = SegCheckpoint(spec, model.state_dict(), sampler.mean, sampler.std, asdict(cfg), metrics)
    return save_seg_checkpoint(out / "model.pt", ckpt)
