"""Occlusion experiments (Zeiler & Fergus 2014): slide a grey patch over the image and map how
much a score drops: (a) a classifier's class probability, (b) the verification similarity
of two images, i.e. which regions make them match."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Score = Callable[[torch.Tensor], torch.Tensor]  # (n, C, H, W) -> (n,)
OCCLUDE = ("a", "b", "both")


def patch_positions(size: int, patch: int, stride: int) -> list[int]:
    if patch <= 0 or stride <= 0:
        raise ValueError("patch and stride must be positive")
    if patch > size:
        raise ValueError(f"patch {patch} is larger than the image ({size})")
    pos = list(range(0, size - patch + 1, stride))
    if pos[-1] != size - patch:
        pos.append(size - patch)
    return pos


def occluded_batch(x: torch.Tensor, boxes: list[tuple[int, int]], patch: int,
                   fill: float) -> torch.Tensor:
    """(1, C, H, W) -> (len(boxes), C, H, W), each copy with one patch set to ``fill``."""
    out = x.repeat(len(boxes), 1, 1, 1)
    for i, (y, xx) in enumerate(boxes):
        out[i, :, y:y + patch, xx:xx + patch] = fill
    return out


def _coverage_average(h: int, w: int, boxes: list[tuple[int, int]], patch: int,
                      values: np.ndarray) -> np.ndarray:
    """Per pixel: the mean value of the patches covering it -> (H, W)."""
    acc, cnt = np.zeros((h, w)), np.zeros((h, w))
    for (y, xx), v in zip(boxes, values, strict=True):
        acc[y:y + patch, xx:xx + patch] += v
        cnt[y:y + patch, xx:xx + patch] += 1
    return acc / np.maximum(cnt, 1)


@dataclass(frozen=True)
class OcclusionMap:
    heatmap: np.ndarray   # (H, W): base score - occluded score (positive: the region helps)
    base: float           # the score without occlusion
    grid: np.ndarray      # (rows, cols) the raw drops per patch position
    patch: int
    stride: int


@torch.inference_mode()
def _drops(score_boxes: Callable[[list[tuple[int, int]]], torch.Tensor], base: float,
           h: int, w: int, *, patch: int, stride: int, batch_size: int,
           progress: Callable[[float, str], None] | None) -> OcclusionMap:
    ys, xs = patch_positions(h, patch, stride), patch_positions(w, patch, stride)
    boxes = [(y, xx) for y in ys for xx in xs]
    drops = []
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        drops.append(base - score_boxes(chunk).float().numpy())
        if progress:
            progress(min(1.0, (i + len(chunk)) / len(boxes)), "occluding")
    d = np.concatenate(drops)
    return OcclusionMap(_coverage_average(h, w, boxes, patch, d), base,
                        d.reshape(len(ys), len(xs)), patch, stride)


@torch.inference_mode()
def occlusion_map(score: Score, x: torch.Tensor, *, patch: int = 8, stride: int = 4,
                  fill: float = 0.0, batch_size: int = 64,
                  progress: Callable[[float, str], None] | None = None) -> OcclusionMap:
    """Drop of ``score`` when each patch of ``x`` (1, C, H, W) is replaced by ``fill``
    (0 = the dataset mean in normalised units)."""
    base = float(score(x)[0])
    return _drops(lambda boxes: score(occluded_batch(x, boxes, patch, fill)), base,
                  *x.shape[-2:], patch=patch, stride=stride, batch_size=batch_size,
                  progress=progress)


def class_score(model: nn.Module, class_index: int, *, probability: bool = True) -> Score:
    """A classifier's probability (or logit) of one class."""
    def f(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return (out.softmax(1) if probability else out)[:, class_index]
    return f


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(model(x).flatten(1).float(), dim=1)


def similarity_score(model: nn.Module, other: torch.Tensor) -> Score:
    """Cosine similarity of each image's embedding with that of ``other`` (1, C, H, W)."""
    target = _embed(model, other)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (_embed(model, x) * target).sum(1)
    return f


@dataclass(frozen=True)
class VerificationOcclusion:
    """Heatmaps of how much occluding each region lowers the similarity of two images."""

    similarity: float
    heatmap_a: np.ndarray   # (H, W) over image a
    heatmap_b: np.ndarray   # (H, W) over image b (same as heatmap_a when mode == "both")
    mode: str


def verification_occlusion(model: nn.Module, a: torch.Tensor, b: torch.Tensor, *,
                           mode: str = "a", patch: int = 8, stride: int = 4, fill: float = 0.0,
                           progress: Callable[[float, str], None] | None = None
                           ) -> VerificationOcclusion:
    """Which regions make ``a`` and ``b`` (each (1, C, H, W)) match? Positive heatmap values
    are regions whose occlusion lowers the cosine similarity of the two embeddings.

    mode "a"/"b": occlude one image, keep the other whole (one heatmap each, both computed
    for "a" and "b" alike so that a report can show both); "both": occlude the same region
    of both images (for aligned images; one heatmap)."""
    if mode not in OCCLUDE:
        raise ValueError(f"unknown occlusion mode {mode!r}; valid: {', '.join(OCCLUDE)}")
    with torch.inference_mode():
        base = float((_embed(model, a) * _embed(model, b)).sum())
    if mode == "both":
        if a.shape != b.shape:
            raise ValueError("occluding both images needs them at the same size")

        def paired(boxes: list[tuple[int, int]]) -> torch.Tensor:
            ea = _embed(model, occluded_batch(a, boxes, patch, fill))
            eb = _embed(model, occluded_batch(b, boxes, patch, fill))
            return (ea * eb).sum(1)

        m = _drops(paired, base, *a.shape[-2:], patch=patch, stride=stride, batch_size=64,
                   progress=progress)
        return VerificationOcclusion(base, m.heatmap, m.heatmap, mode)
    ma = occlusion_map(similarity_score(model, b), a, patch=patch, stride=stride, fill=fill,
                       progress=progress)
    mb = occlusion_map(similarity_score(model, a), b, patch=patch, stride=stride, fill=fill)
    return VerificationOcclusion(base, ma.heatmap, mb.heatmap, mode)
