"""Shared parts of the training benchmarks: our loop, the pytorch-metric-learning baseline loop, timing."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.data.datasets import DatasetSplit
from training.data.folders import LabelledImages
from training.data.transforms import get_augmentation
from training.engine.callbacks import NormLog, TensorBoard, TrainState
from training.engine.optim import build_optimizer, build_scheduler
from training.engine.train import (
    TrainConfig,
    build_batch_sampler,
    build_loss_and_miner,
    build_spec,
    fit,
    seed_everything,
    train,
)
from training.models.backbones import build_model

log = logging.getLogger(__name__)


def train_ours(cfg: TrainConfig) -> tuple[Path, float]:
    """Our full training entry point; returns (model.pt, training images/s over all epochs)."""
    path = train(cfg)
    hist = load_checkpoint(path).metrics["history"]
    n = sum(r["images_per_s"] * r["seconds"] for r in hist)
    return path, n / sum(r["seconds"] for r in hist)


def _pml_parts(margin: float):
    from pytorch_metric_learning import losses, miners

    return (losses.TripletMarginLoss(margin=margin),
            miners.TripletMarginMiner(margin=margin, type_of_triplets="hard"))


def train_pml(cfg: TrainConfig, split: DatasetSplit) -> tuple[Path, float]:
    """The baseline: pytorch-metric-learning's TripletMarginLoss + TripletMarginMiner("hard")
    and its MPerClassSampler, in the plain loop of its examples; same backbone, data,
    augmentation, optimiser, schedule and number of images as ``cfg``."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    seed_everything(cfg.seed)
    spec = build_spec(cfg, split)
    model = build_model(spec)
    ds = LabelledImages(split.train, get_augmentation(cfg.augmentation or split.augment, spec))
    batch = cfg.p * cfg.k
    steps = cfg.steps_per_epoch or len(ds) // batch
    sampler = MPerClassSampler(ds.targets, m=cfg.k, batch_size=batch,
                               length_before_new_iter=steps * batch)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=True, persistent_workers=cfg.num_workers > 0)
    loss_fn, miner = _pml_parts(cfg.margin if cfg.margin is not None else 0.2)
    opt = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr,
                          weight_decay=cfg.weight_decay)
    sched = build_scheduler(cfg.schedule, opt, total_steps=cfg.epochs * steps,
                            warmup_steps=cfg.warmup_steps)
    n_img, seconds = 0, 0.0
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        losses = []
        for x, y in loader:
            emb = model(x)
            loss = loss_fn(emb, y, miner(emb, y))
            opt.zero_grad()
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            n_img += len(x)
        seconds += time.perf_counter() - t0
        log.info("pml epoch %d loss %.4f (%.1f img/s so far)", epoch + 1, np.mean(losses),
                 n_img / seconds)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(out / "model.pt", Checkpoint(spec, model.eval().state_dict(),
                                                        config={"baseline": "pml"}))
    return path, n_img / seconds


def interleaved_speed(cfg: TrainConfig, split: DatasetSplit, *, rounds: int = 3,
                      steps: int = 8, logdir: Path) -> dict[str, float]:
    """Images/s of our loop (fit with its per-step TensorBoard and norm logging) and of the
    pml loop on the same model and batches, alternating ``rounds`` times so that both see
    the same machine load (the development box is shared)."""
    seed_everything(cfg.seed)
    spec = build_spec(cfg, split)
    model = build_model(spec)
    ds = LabelledImages(split.train, get_augmentation(cfg.augmentation or split.augment, spec))
    cfg = replace(cfg, steps_per_epoch=steps, loss="triplet", miner="batch-hard")
    sampler = build_batch_sampler(cfg, ds.targets)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0)
    ours_loss, ours_miner = build_loss_and_miner(cfg)
    pml_loss, pml_miner = _pml_parts(0.2)
    opt = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr)
    for _ in loader:  # start the persistent workers before timing anything
        pass
    totals = {"ours": [0, 0.0], "pml": [0, 0.0]}
    for r in range(rounds):
        tb = TensorBoard(logdir / f"tb{r}")  # closed by fit's on_train_end
        callbacks = [NormLog(logdir / "norms.csv", every=50, sink=tb.scalar), tb]
        state = TrainState(model=model, spec=spec, optimizer=opt, config={}, loader=loader)
        t0 = time.perf_counter()
        fit(state, loader, ours_loss, ours_miner, epochs=1, grad_clip=cfg.grad_clip,
            callbacks=callbacks)
        totals["ours"][0] += steps * cfg.p * cfg.k
        totals["ours"][1] += time.perf_counter() - t0
        t0 = time.perf_counter()
        model.train()
        for x, y in loader:
            emb = model(x)
            loss = pml_loss(emb, y, pml_miner(emb, y))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or 1e9)
            opt.step()
        totals["pml"][0] += steps * cfg.p * cfg.k
        totals["pml"][1] += time.perf_counter() - t0
    return {k: n / s for k, (n, s) in totals.items()}
