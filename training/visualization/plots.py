"""Matplotlib figures (Agg backend) for the visualization jobs: each function writes one PNG, or
returns a Figure (``*_figure``) for ``save_figure``, so that tests can read what it shows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG and free it."""
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
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return save_figure(fig, path)


def filters_figure(weight: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """(out, in, kh, kw) conv weights; RGB when in == 3, else the mean over input channels."""
    imgs = []
    for f in weight:
        img = np.transpose(f, (1, 2, 0)) if f.shape[0] == 3 else f.mean(0)
        imgs.append(normalise(img))
    return image_grid(imgs, path, ncols=min(16, len(imgs)), size=0.8, suptitle=title)


def feature_maps_figure(maps: dict[str, np.ndarray], path: str | Path, *,
                        max_channels: int = 16) -> Path:
    """One row per layer: its first ``max_channels`` maps (C, h, w), each scaled separately
    (so colours compare within a map, not across maps; the title says so)."""
    rows = len(maps)
    fig, axes = plt.subplots(rows, max_channels, figsize=(max_channels * 0.9, rows * 1.2 + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, m) in enumerate(maps.items()):
        axes[r, 0].set_title(f"{name}: {m.shape[0]} channels of {m.shape[1]}x{m.shape[2]}",
                             fontsize=9, loc="left")
        for c in range(min(max_channels, m.shape[0])):
            axes[r, c].imshow(normalise(m[c]), cmap="viridis")
            axes[r, c].text(0.03, 0.97, str(c), transform=axes[r, c].transAxes, fontsize=8,
                            va="top", color="white",
                            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    fig.suptitle(f"feature maps: the first {max_channels} channels of each layer (numbered), "
                 "each scaled to its own range: dark = low, yellow = high", fontsize=10)
    return save_figure(fig, path)


def shared_scale_overlays(images: Sequence[np.ndarray], heatmaps: Sequence[np.ndarray | None],
                          *, titles: Sequence[str], suptitle: str, cbar_label: str,
                          alpha: float = 0.75) -> Figure:
    """One panel per image: the image in grey with its heatmap alpha-blended over it (a None
    heatmap: the image alone, in colour), every panel on ONE colour scale (symmetric about 0,
    diverging) and one labelled colour bar, so that equal colours mean equal values across
    panels. The blend grows with |value| (up to ``alpha``), so that where nothing happens the
    image shows through unveiled."""
    lim = max((float(np.abs(h).max()) for h in heatmaps if h is not None), default=0.0) or 1.0
    norm = Normalize(-lim, lim)
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 1.0, 4.4), squeeze=False,
                             layout="constrained")
    for ax, img, hm, t in zip(axes[0], images, heatmaps, titles, strict=True):
        if hm is None:
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.mean(2) if img.ndim == 3 else img, cmap="gray", vmin=0, vmax=1)
            ax.imshow(hm, cmap="RdBu_r", norm=norm,
                      alpha=alpha * np.clip(np.abs(hm) / lim, 0.15, 1.0))
        ax.set_title(t, fontsize=10)
        ax.axis("off")
    # the bar shows the colours at full strength, not a panel's blend
    cb = fig.colorbar(ScalarMappable(norm, "RdBu_r"), ax=list(axes[0]), fraction=0.046,
                      shrink=0.9)
    cb.set_label(cbar_label, fontsize=10)
    cb.ax.tick_params(labelsize=9)
    fig.suptitle(suptitle, fontsize=12)
    return fig


def curve(values: Sequence[float], path: str | Path, *, title: str, ylabel: str,
          more: dict[str, Sequence[float]] | None = None, axis_label: str = "") -> Path:
    """``values`` per step; with ``more`` curves, all on one log axis (``axis_label`` names
    what they share, e.g. "loss") with a legend."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(values, label=ylabel)
    for name, v in (more or {}).items():
        ax.plot(v, label=name)
    ax.set_xlabel("optimisation step", fontsize=10)
    ax.set_ylabel(f"{axis_label or ylabel} (log scale)" if more else ylabel, fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.tick_params(labelsize=9)
    if more:
        ax.legend(fontsize=9)
        ax.set_yscale("log")
    return save_figure(fig, path)


def scatter_with_thumbnails(points: np.ndarray, labels: Sequence[str], path: str | Path, *,
                            thumbs: dict[int, np.ndarray] | None = None, title: str = "",
                            zoom: float = 1.0) -> Path:
    """(n, 2) points coloured by label; thumbnails drawn at the points in ``thumbs``, framed
    in their point's colour."""
    fig, ax = plt.subplots(figsize=(9, 9))
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    lab = np.asarray(labels)
    for i, name in enumerate(names):
        sel = lab == name
        ax.scatter(points[sel, 0], points[sel, 1], s=8, color=cmap(i % cmap.N),
                   label=name if len(names) <= 20 else None)
    colour = {name: cmap(i % cmap.N) for i, name in enumerate(names)}
    for idx, img in (thumbs or {}).items():
        box = AnnotationBbox(OffsetImage(img, zoom=zoom, cmap="gray"), points[idx], frameon=True,
                             pad=0.15, bboxprops={"edgecolor": colour[labels[idx]],
                                                  "linewidth": 2})
        ax.add_artist(box)
    if len(names) <= 20:
        ax.legend(title="label", fontsize=9, title_fontsize=10, markerscale=2, loc="best")
    ax.set_title(title, fontsize=12)
    ax.set_xlabel("t-SNE axes have no units: only neighbourhoods are meaningful", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)


FRAME = {True: "green", False: "red"}


def _frame(ax, ok: bool | None, *, style: str = "solid") -> None:
    if ok is None:
        return
    for sp in ax.spines.values():
        sp.set_visible(True)
        sp.set_color(FRAME[ok])
        sp.set_linewidth(3)
        sp.set_linestyle(style)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_visible(False)


def _frame_legend(fig, meaning: tuple[str, str], *, extra: Sequence[Patch] = (),
                  loc: str = "outside lower center") -> None:
    """The key to the frames: (what green means, what red means)."""
    handles = [Patch(facecolor="none", edgecolor="green", linewidth=3, label=f"green: {meaning[0]}"),
               Patch(facecolor="none", edgecolor="red", linewidth=3, label=f"red: {meaning[1]}"),
               *extra]
    fig.legend(handles=handles, loc=loc, ncols=len(handles), fontsize=9, frameon=False)


def gallery_figure(rows: Sequence[tuple[np.ndarray, str,
                                        Sequence[tuple[np.ndarray, str, bool | None]]]], *,
                   title: str = "",
                   legend: tuple[str, str] = ("same label as the query",
                                              "different label")) -> Figure:
    """One row per query: its image and title, then its hits (image, caption, correct?).
    Correct hits are framed green, wrong ones red, unknown ones not at all; ``legend`` says
    what the two colours mean (shown when some hit is framed)."""
    ncols = 1 + max((len(h) for _, _, h in rows), default=0)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.9 * ncols, 2.3 * len(rows) + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        _bare(ax)
    for r, (qimg, qtitle, hits) in enumerate(rows):
        axes[r, 0].imshow(qimg, cmap="gray")
        axes[r, 0].set_title(qtitle, fontsize=10, fontweight="bold")
        for c, (img, cap, ok) in enumerate(hits, start=1):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray")
            ax.set_title(cap, fontsize=9)
            _frame(ax, ok)
    if any(ok is not None for _, _, hits in rows for *_, ok in hits):
        _frame_legend(fig, legend)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def gallery(rows: Sequence[tuple[np.ndarray, str, Sequence[tuple[np.ndarray, str, bool | None]]]],
            path: str | Path, *, title: str = "",
            legend: tuple[str, str] = ("same label as the query", "different label")) -> Path:
    """:func:`gallery_figure` written to ``path``."""
    return save_figure(gallery_figure(rows, title=title, legend=legend), path)


def cluster_gallery_figure(rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str, bool | None,
                                                                     bool]]]], *,
                           title: str = "") -> Figure:
    """One row per cluster under its own title (size, purity): its members (image, caption,
    has the majority label?, drawn at random?). Central members come first with solid frames;
    random ones are captioned "random" and framed dashed."""
    ncols = max((len(m) for _, m in rows), default=1)
    fig = plt.figure(figsize=(1.7 * ncols, 2.35 * len(rows) + 0.8), layout="constrained")
    # the first subfigure holds the figure's title and the key to the frames
    head, *subs = np.atleast_1d(fig.subfigures(len(rows) + 1, 1,
                                              height_ratios=[0.8] + [2.35] * len(rows)))
    framed = False
    for sub, (row_title, members) in zip(subs, rows, strict=True):
        sub.suptitle(row_title, fontsize=11, fontweight="bold", x=0.01, ha="left")
        axes = np.atleast_1d(sub.subplots(1, ncols))
        for ax in axes:
            _bare(ax)
        for ax, (img, cap, ok, random) in zip(axes, members, strict=False):
            ax.imshow(img, cmap="gray")
            ax.set_title(f"{cap}\n(random)" if random else cap, fontsize=9,
                         style="italic" if random else "normal")
            _frame(ax, ok, style="dashed" if random else "solid")
            framed |= ok is not None
    if title:
        head.suptitle(title, fontsize=12)
    random_key = Patch(facecolor="none", edgecolor="grey", linewidth=2, linestyle="dashed",
                       label="dashed: a random member (solid: nearest the centre)")
    if framed:
        _frame_legend(head, ("the cluster's majority label", "another label"),
                      extra=[random_key], loc="lower center")
    else:
        head.legend(handles=[random_key], loc="lower center", fontsize=9, frameon=False)
    return fig
