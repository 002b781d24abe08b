"""The training loop: a Siamese (shared-weight) embedding network, P x K batches, a miner and a loss."""

from __future__ import annotations

import csv
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.backbones import build_model, load_pretrained_backbone
from training.calibration import best_accuracy_threshold, pair_distances, sample_pairs
from training.checkpoint import Checkpoint, save_checkpoint
from training.data import LabelledImages, Sample, list_image_folder, split_by_class
from training.distances import get_distance
from training.embedder import Embedder
from training.losses import DEFAULT_MINER, get_loss
from training.miners import MINERS
from training.samplers import PKSampler
from training.spec import ModelSpec
from training.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    arch: str = "smallcnn"
    embedding_dim: int = 128
    input_size: int = 64
    loss: str = "triplet"
    miner: str | None = None  # default: the loss's own (see losses.DEFAULT_MINER)
    margin: float | None = None  # default: 1.0 contrastive, 0.2 triplet
    distance: str = "l2"
    epochs: int = 5
    steps_per_epoch: int | None = None
    p: int = 16
    k: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    val_fraction: float = 0.2
    num_workers: int = 2
    seed: int = 0
    pretrained: str | None = None
    name: str = "model"
    augment: bool = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_parts(cfg: TrainConfig):
    margin = cfg.margin if cfg.margin is not None else (1.0 if cfg.loss == "contrastive" else 0.2)
    loss = get_loss(cfg.loss, margin=margin, distance=get_distance(cfg.distance))
    miner_name = cfg.miner or DEFAULT_MINER[cfg.loss]
    if miner_name not in MINERS:
        raise ValueError(f"unknown miner {miner_name!r}; valid: {', '.join(sorted(MINERS))}")
    cls = MINERS[miner_name]
    kwargs = {"margin": margin} if miner_name == "semi-hard" else {}
    miner = cls(**kwargs)
    return loss, miner


def calibrate(embedder: Embedder, samples: list[Sample], *, n_pairs: int = 2000, seed: int = 0):
    """Embed held-out images and pick the best-accuracy distance threshold on sampled pairs."""
    emb = embedder.embed_paths([s.path for s in samples])
    labels = np.array([s.label for s in samples])
    i, j, same = sample_pairs(labels, n_pairs=n_pairs, seed=seed)
    return best_accuracy_threshold(pair_distances(emb, i, j), same)


def train(cfg: TrainConfig, samples: list[Sample] | None = None) -> Path:
    """Train, write ``<out>/last.pt`` every epoch and ``<out>/model.pt`` (calibrated) at the end."""
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = samples if samples is not None else list_image_folder(cfg.data)
    train_s, val_s = split_by_class(samples, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if not val_s:  # too few classes to hold some out: calibrate on the training classes
        val_s = train_s
    spec = ModelSpec(arch=cfg.arch, embedding_dim=cfg.embedding_dim, input_size=cfg.input_size,
                     name=cfg.name)
    model = build_model(spec)
    if cfg.pretrained:
        missing, _ = load_pretrained_backbone(model, cfg.pretrained)
        log.info("loaded %s (%d backbone keys missing)", cfg.pretrained, len(missing))
    loss_fn, miner = _build_parts(cfg)
    tf = train_transform(spec) if cfg.augment else eval_transform(spec)
    ds = LabelledImages(train_s, tf)
    sampler = PKSampler(ds.targets, p=min(cfg.p, len(set(ds.targets))), k=cfg.k,
                        num_batches=cfg.steps_per_epoch, seed=cfg.seed)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * len(sampler))
    history = []
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "active_fraction", "images_per_s", "lr"])
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            model.train()
            losses, active, total, n_img, t0 = [], 0, 0, 0, time.perf_counter()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
            for x, y in bar:
                emb = model(x)
                indices = miner(emb, y)
                loss = loss_fn(emb, y, indices)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                losses.append(loss.item())
                active += loss_fn.last_active
                total += loss_fn.last_total
                n_img += len(x)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}",
                                active=f"{loss_fn.last_active / max(loss_fn.last_total, 1):.2f}")
            row = [epoch + 1, float(np.mean(losses)), active / max(total, 1),
                   n_img / (time.perf_counter() - t0), sched.get_last_lr()[0]]
            writer.writerow(row)
            f.flush()
            history.append(row)
            log.info("epoch %d loss %.4f active %.3f %.1f img/s", *row[:4])
            save_checkpoint(out / "last.pt", Checkpoint(spec, model.state_dict(),
                                                        config=asdict(cfg), extra={"epoch": epoch + 1}))
    model.eval()
    cal = calibrate(Embedder(model, spec), val_s, seed=cfg.seed)
    log.info("calibrated threshold %.4f (val accuracy %.3f)", cal.threshold, cal.accuracy)
    final = Checkpoint(spec.with_threshold(cal.threshold), model.state_dict(), config=asdict(cfg),
                       metrics={"calibration": cal.to_dict(), "final_loss": history[-1][1]})
    return save_checkpoint(out / "model.pt", final)
