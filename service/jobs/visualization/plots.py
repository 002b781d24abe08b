"""Matplotlib figures (Agg backend) for the visualization jobs; each function writes one PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def normalise(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] (a constant array maps to 0.5)."""
    a = np.asarray(a, dtype=np.float64)
    lo, hi = a.min(), a.max()
    return np.full_like(a, 0.5) if hi - lo < 1e-12 else (a - lo) / (hi - lo)


def image_grid(images: Sequence[np.ndarray], path: str | Path, *, titles: Sequence[str] = (),
               ncols: int = 8, cmap: str = "gray", suptitle: str = "",
               size: float = 1.6) -> Path:
    """Images (H, W) or (H, W, 3) in [0, 1] in a grid with optional titles."""
    n = max(len(images), 1)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None, vmin=0, vmax=1)
        if i < len(titles):
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def filters_figure(weight: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """(out, in, kh, kw) conv weights; RGB when in == 3, else the mean over input channels."""
    imgs = []
    for f in weight:
        img = np.transpose(f, (1, 2, 0)) if f.shape[0] == 3 else f.mean(0)
        imgs.append(normalise(img))
    return image_grid(imgs, path, ncols=min(16, len(imgs)), size=0.8, suptitle=title)


def feature_maps_figure(maps: dict[str, np.ndarray], path: str | Path, *,
                        max_channels: int = 16) -> Path:
    """One row per layer: its first ``max_channels`` maps (C, h, w), each scaled separately."""
    rows = len(maps)
    fig, axes = plt.subplots(rows, max_channels, figsize=(max_channels * 0.9, rows * 1.1 + 0.3),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, m) in enumerate(maps.items()):
        axes[r, 0].set_title(name, fontsize=7, loc="left")
        for c in range(min(max_channels, m.shape[0])):
            axes[r, c].imshow(normalise(m[c]), cmap="viridis")
    return _save(fig, path)


def heatmap_overlays(images: Sequence[np.ndarray], heatmaps: Sequence[np.ndarray],
                     path: str | Path, *, titles: Sequence[str] = (), suptitle: str = "",
                     symmetric: bool = True) -> Path:
    """Pairs of (image, image + heatmap); a diverging colour map centred on 0 when symmetric."""
    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(6, 3 * n + 0.4), squeeze=False)
    for i, (img, hm) in enumerate(zip(images, heatmaps, strict=True)):
        axes[i, 0].imshow(img)
        axes[i, 0].set_title(titles[i] if i < len(titles) else "", fontsize=8)
        lim = float(np.abs(hm).max()) or 1.0
        axes[i, 1].imshow(img.mean(2) if img.ndim == 3 else img, cmap="gray")
        im = axes[i, 1].imshow(hm, cmap="RdBu_r" if symmetric else "inferno", alpha=0.6,
                               vmin=-lim if symmetric else None, vmax=lim if symmetric else None)
        fig.colorbar(im, ax=axes[i, 1], fraction=0.046)
        for ax in axes[i]:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return _save(fig, path)


def curve(values: Sequence[float], path: str | Path, *, title: str, ylabel: str,
          more: dict[str, Sequence[float]] | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(values, label=ylabel)
    for name, v in (more or {}).items():
        ax.plot(v, label=name)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    if more:
        ax.legend(fontsize=7)
        ax.set_yscale("log")
    return _save(fig, path)


def scatter_with_thumbnails(points: np.ndarray, labels: Sequence[str], path: str | Path, *,
                            thumbs: dict[int, np.ndarray] | None = None, title: str = "",
                            zoom: float = 0.5) -> Path:
    """(n, 2) points coloured by label; thumbnails drawn at the points in ``thumbs``."""
    fig, ax = plt.subplots(figsize=(9, 9))
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    lab = np.asarray(labels)
    for i, name in enumerate(names):
        sel = lab == name
        ax.scatter(points[sel, 0], points[sel, 1], s=8, color=cmap(i % cmap.N),
                   label=name if len(names) <= 20 else None)
    for idx, img in (thumbs or {}).items():
        box = AnnotationBbox(OffsetImage(img, zoom=zoom, cmap="gray"), points[idx], frameon=True,
                             pad=0.1)
        ax.add_artist(box)
    if len(names) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def gallery(rows: Sequence[tuple[np.ndarray, str, Sequence[tuple[np.ndarray, str, bool | None]]]],
            path: str | Path, *, title: str = "") -> Path:
    """One row per query: its image and title, then its hits (image, caption, correct?).
    Correct hits are framed green, wrong ones red, unknown ones not at all."""
    ncols = 1 + max((len(h) for _, _, h in rows), default=0)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.6 * ncols, 1.9 * len(rows) + 0.3),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    for r, (qimg, qtitle, hits) in enumerate(rows):
        axes[r, 0].imshow(qimg, cmap="gray")
        axes[r, 0].set_title(qtitle, fontsize=7, fontweight="bold")
        for c, (img, cap, ok) in enumerate(hits, start=1):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray")
            ax.set_title(cap, fontsize=6)
            if ok is not None:
                for s in ax.spines.values():
                    s.set_visible(True)
                    s.set_color("green" if ok else "red")
                    s.set_linewidth(3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
