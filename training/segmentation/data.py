"""ISBI 2012 slices, random training tiles, and the U-Net paper's augmentations
(elastic deformation, flips, rotations) applied jointly to images and masks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEMBRANE, INTERIOR = 1, 0  # class ids; in ISBI labels black (0) is membrane, white is interior


@dataclass(frozen=True)
class Slice:
    """One labelled slice: image (H, W) float32 in [0, 1]; mask (H, W) int64 class ids or None."""

    name: str
    image: np.ndarray
    mask: np.ndarray | None


def load_image(path: str | Path) -> np.ndarray:
    """A grey image file -> (H, W) float32 in [0, 1]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def load_mask(path: str | Path) -> np.ndarray:
    """An ISBI label (0 membrane, 255 interior) -> (H, W) int64 with MEMBRANE=1, INTERIOR=0."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("L"))
    return (a < 128).astype(np.int64)


def parse_slices(spec: str) -> list[int]:
    """'0-19' or '0,2,5-7' -> sorted slice numbers."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError as e:
            raise ValueError(f"bad slice list {spec!r} (expected e.g. '0-19' or '0,3,20-23')") from e
        if b < a:
            raise ValueError(f"bad slice range {part!r}")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError(f"empty slice list {spec!r}")
    return sorted(out)


def load_isbi(root: str | Path, slices: list[int]) -> list[Slice]:
    """Labelled slices ``train/image/N.png`` + ``train/label/N.png`` of the ISBI 2012 folder."""
    root = Path(root)
    if not (root / "train" / "image").is_dir():
        raise FileNotFoundError(f"{root} does not look like the ISBI 2012 folder "
                                "(expected train/image/N.png and train/label/N.png)")
    out = []
    for n in slices:
        img, lab = root / "train" / "image" / f"{n}.png", root / "train" / "label" / f"{n}.png"
        if not img.is_file() or not lab.is_file():
            raise FileNotFoundError(f"slice {n} missing under {root}/train")
        out.append(Slice(str(n), load_image(img), load_mask(lab)))
    return out


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rotate: bool = True          # arbitrary angle in [0, 360)
    elastic_sigma: float = 10.0  # std (pixels) of the displacements on the coarse grid; 0 = off
    elastic_grid: int = 3        # coarse grid of random displacements (the paper: 3x3)
    brightness: float = 0.1


def _elastic_field(n: int, size: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Smooth random displacements, bicubically interpolated from a coarse grid:
    (n, size, size, 2) in normalised [-1, 1] grid units."""
    coarse = torch.randn(n, 2, cfg.elastic_grid, cfg.elastic_grid, generator=gen)
    coarse = coarse * (cfg.elastic_sigma * 2.0 / size)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig,
                  gen: torch.Generator, out_size: int, weights: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Jointly warp crops: images (n, 1, S, S) float, masks (n, S, S) int64 with S >= out_size*sqrt2
    and optional pixel weights (n, S, S) -> (n, 1, out, out), (n, out, out), (n, out, out).
    One sampling grid per pair (rotation, flips, elastic field); images and weights are
    sampled bilinearly, masks with nearest neighbour."""
    n, _, s, _ = images.shape
    scale = out_size / s  # the output covers the central out_size pixels of the crop
    angle = torch.rand(n, generator=gen) * 2 * math.pi if cfg.rotate else torch.zeros(n)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    fx = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if cfg.flips else torch.ones(n)
    fy = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if cfg.flips else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin * fy
    theta[:, 1, 0], theta[:, 1, 1] = sin * fx, cos * fy
    grid = F.affine_grid(theta, [n, 1, out_size, out_size], align_corners=False)
    if cfg.elastic_sigma > 0:
        grid = grid + _elastic_field(n, out_size, cfg, gen) * scale
    img = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                        align_corners=False)
    msk = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="reflection",
                        align_corners=False)[:, 0].long()
    if weights is not None:
        weights = F.grid_sample(weights[:, None], grid, mode="bilinear",
                                padding_mode="reflection", align_corners=False)[:, 0]
    if cfg.brightness > 0:
        img = img + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 2 * cfg.brightness
    return img, msk, weights


class TileSampler:
    """Random training tiles from labelled slices, augmented on the fly.

    ``sample(batch)`` -> images (batch, 1, tile, tile) float32 normalised with the slices' mean
    and std, masks (batch, tile, tile) int64, pixel weights (batch, tile, tile) float32 (ones
    unless ``weights``, one (H, W) map per slice, are given).
    """

    def __init__(self, slices: list[Slice], *, tile: int, augment: AugmentConfig | None,
                 seed: int = 0, weights: list[np.ndarray] | None = None) -> None:
        if not slices or any(s.mask is None for s in slices):
            raise ValueError("training needs labelled slices")
        self.images = torch.from_numpy(np.stack([s.image for s in slices]))
        self.masks = torch.from_numpy(np.stack([s.mask for s in slices]))
        self.weights = torch.from_numpy(np.stack(weights).astype(np.float32)) \
            if weights is not None else torch.ones(self.masks.shape)
        self.tile = tile
        self.crop = min(int(math.ceil(tile * math.sqrt(2))) + 8, *self.images.shape[-2:]) \
            if augment is not None else tile
        if self.crop < tile:
            raise ValueError(f"tile {tile} is larger than the slices {tuple(self.images.shape[-2:])}")
        self.augment = augment
        self.gen = torch.Generator().manual_seed(seed)
        self.mean, self.std = float(self.images.mean()), float(self.images.std())

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, h, w = self.images.shape
        k = torch.randint(n, (batch,), generator=self.gen)
        ys = torch.randint(h - self.crop + 1, (batch,), generator=self.gen)
        xs = torch.randint(w - self.crop + 1, (batch,), generator=self.gen)

        def crops(t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t[i, y:y + self.crop, x:x + self.crop]
                                for i, y, x in zip(k, ys, xs, strict=True)])

        imgs, msks, wts = crops(self.images)[:, None], crops(self.masks), crops(self.weights)
        if self.augment is not None:
            imgs, msks, wts = augment_batch(imgs, msks, self.augment, self.gen, self.tile, wts)
        return (imgs - self.mean) / self.std, msks, wts
