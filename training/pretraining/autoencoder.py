"""Autoencoder pre-training: a convolutional AE or VAE on unlabelled images whose encoder initialises an embedding backbone."""

from __future__ import annotations

import csv
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from training.checkpoint import read_autoencoder, save_autoencoder
from training.data.folders import IMAGE_EXTENSIONS, ImagePaths
from training.data.transforms import eval_transform, train_transform
from training.models.autoencoder import ConvAutoencoder
from training.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from training.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    out: str
    data: str | None = None  # image folder, scanned recursively (labels, if any, are ignored)
    list_file: str | None = None  # or: a text file with one image path per line
    exclude_file: str | None = None  # paths the run must not see (e.g. the test split)
    arch: str = "smallcnn"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"width": 16} for smallcnn
    input_size: int = 64
    latent_channels: int = 64
    variational: bool = False
    beta: float = 1.0
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    num_workers: int = 2
    seed: int = 0
    max_images: int | None = None
    augment: bool = True
    grid_images: int = 8


def list_unlabelled(cfg: PretrainConfig) -> list[str]:
    """The images this run may see: --data and --list, minus --exclude, sorted, deduplicated."""
    if not cfg.data and not cfg.list_file:
        raise ValueError("give --data (an image folder) or --list (a file of image paths)")
    paths: set[str] = set()
    if cfg.data:
        root = Path(cfg.data)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        paths |= {str(p.resolve()) for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
    if cfg.list_file:
        paths |= {str(Path(x).resolve()) for x in _read_list(cfg.list_file)}
    if cfg.exclude_file:
        excluded = {str(Path(x).resolve()) for x in _read_list(cfg.exclude_file)}
        before = len(paths)
        paths -= excluded
        log.info("excluded %d of %d images (%s)", before - len(paths), before, cfg.exclude_file)
    out = sorted(paths)
    missing = [p for p in out if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed image(s) not found, first: {missing[0]}")
    if not out:
        raise ValueError("no images left to pre-train on")
    if cfg.max_images is not None and len(out) > cfg.max_images:
        rng = np.random.default_rng(cfg.seed)
        out = sorted(rng.choice(out, cfg.max_images, replace=False).tolist())
    return out


def _read_list(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"list file not found: {p}")
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]


def images_digest(paths: Sequence[str]) -> str:
    """sha256 of the sorted image list: which images a pre-trained encoder has seen."""
    return hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()


def _spec(cfg: PretrainConfig) -> ModelSpec:
    return ModelSpec(arch=cfg.arch, embedding_dim=1, input_size=cfg.input_size,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, arch_kwargs=dict(cfg.arch_kwargs))


def pretrain(cfg: PretrainConfig) -> Path:
    """Train the autoencoder; write ``<out>/autoencoder.pt``, ``metrics.csv`` and
    ``reconstructions.png`` (top row inputs, bottom row reconstructions). Returns the .pt path."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = list_unlabelled(cfg)
    spec = _spec(cfg)
    log.info("pre-training a %s%s on %d images", cfg.arch, " VAE" if cfg.variational else " AE",
             len(paths))
    model = ConvAutoencoder(cfg.arch, in_channels=spec.in_channels, input_size=cfg.input_size,
                            latent_channels=cfg.latent_channels, variational=cfg.variational,
                            arch_kwargs=cfg.arch_kwargs)
    tf = train_transform(spec, color_jitter=0.0, scale=(0.7, 1.0)) if cfg.augment \
        else eval_transform(spec)
    loader = DataLoader(ImagePaths(paths, tf), batch_size=min(cfg.batch_size, len(paths)),
                        shuffle=True, drop_last=len(paths) > cfg.batch_size,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * len(loader)))
    rows = []
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "reconstruction_mse", "kl", "images_per_s", "seconds"])
        for epoch in range(cfg.epochs):
            model.train()
            tot, rec, kl, n, t0 = 0.0, 0.0, 0.0, 0, time.perf_counter()
            bar = progress(loader, desc=f"pretrain {epoch + 1}/{cfg.epochs}", unit="step",
                           leave=False)
            for x, _ in bar:
                loss, r, k = model.loss(x, beta=cfg.beta)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tot, rec, kl, n = tot + loss.item() * len(x), rec + r * len(x), kl + k * len(x), \
                    n + len(x)
                bar.set_postfix(mse=f"{r:.4f}")
            seconds = time.perf_counter() - t0
            row = [epoch + 1, tot / n, rec / n, kl / n, n / seconds, seconds]
            writer.writerow(row)
            f.flush()
            rows.append(row)
            log.info("epoch %d loss %.4f mse %.4f kl %.4f %.1f img/s", *row[:5])
    recalibrate_batchnorm(model, loader)
    model.eval()
    grid_paths = paths[:: max(1, len(paths) // cfg.grid_images)][:cfg.grid_images]
    eval_mse = save_reconstruction_grid(model, spec, grid_paths, out / "reconstructions.png")
    return save_autoencoder(
        out / "autoencoder.pt", model,
        encoder={"arch": cfg.arch, "in_channels": spec.in_channels,
                 "arch_kwargs": dict(cfg.arch_kwargs),
                 "input_size": cfg.input_size, "mean": list(spec.mean), "std": list(spec.std)},
        config=asdict(cfg), images={"count": len(paths), "sha256": images_digest(paths)},
        metrics={"final_loss": rows[-1][1], "final_mse": rows[-1][2], "grid_mse": eval_mse})


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, *, max_batches: int = 50) -> None:
    """Recompute BatchNorm running statistics as a plain average over up to ``max_batches``
    batches with the final weights ("precise BN"): the exponential averages collected during
    training lag behind the weights, which matters after short runs and for the encoder that
    is handed on to metric learning."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for b, (x, *_) in enumerate(loader):
        if b == max_batches:
            break
        model(x)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom


@torch.inference_mode()
def save_reconstruction_grid(model: ConvAutoencoder, spec: ModelSpec, paths: Sequence[str],
                             dest: str | Path) -> float:
    """A PNG with the images (top row) and their reconstructions (bottom row), both
    de-normalised; returns the reconstruction MSE (normalised space) over these images."""
    from PIL import Image
    from torchvision.utils import save_image

    tf = eval_transform(spec)
    images = []
    for p in paths:
        with Image.open(p) as img:
            images.append(tf(img))
    x = torch.stack(images)
    recon = model(x)[0]
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    grid = torch.cat([x, recon]) * std + mean
    save_image(grid.clamp(0, 1), str(dest), nrow=len(paths), padding=2, pad_value=1.0)
    return float(F.mse_loss(recon, x))


def init_backbone_from_autoencoder(model: nn.Module, spec: ModelSpec, path: str | Path) -> dict:
    """Copy a pre-trained encoder into ``model.backbone`` (an ``EmbeddingNet``); the head
    stays random. Refuses an encoder of another architecture, channel count or arch_kwargs,
    and loads strictly (every backbone tensor must come from the encoder). Returns the
    autoencoder's payload minus weights (for provenance: images count and digest)."""
    payload = read_autoencoder(path)
    enc = payload["encoder"]
    mine = {"arch": spec.arch, "in_channels": spec.in_channels, "arch_kwargs": dict(spec.arch_kwargs)}
    theirs = {k: enc[k] for k in mine}
    if mine != theirs:
        raise ValueError(f"autoencoder encoder {theirs} does not match the model {mine}")
    if list(enc["mean"]) != list(spec.mean) or list(enc["std"]) != list(spec.std):
        log.warning("autoencoder was trained with another input normalisation than the model's")
    state = {k.removeprefix("backbone."): v for k, v in payload["state_dict"].items()
             if k.startswith("backbone.")}
    model.backbone.load_state_dict(state, strict=True)
    log.info("backbone initialised from %s (%d images, %s)", path, payload["images"]["count"],
             "VAE" if payload["config"]["variational"] else "AE")
    return {k: v for k, v in payload.items() if k != "state_dict"}

