"""Hierarchical triplet loss (Ge et al., ECCV 2018): a class tree, anchor-neighbour sampling, a tree margin.

The three parts compose like the rest of the package:

- ``ClassTree.rebuild(emb, labels, levels=L)`` builds the class hierarchy from the *current*
  model's embeddings of the training set: class centres are merged agglomeratively (nearest
  first, average linkage); level l merges nodes closer than the threshold d_l, with thresholds
  spaced evenly from d_0 = the mean intra-class distance to d_L = the largest centre distance.
- ``HierarchicalSampler`` draws batches of ``anchor_classes`` random classes, each with its
  ``neighbours`` nearest classes in the tree, ``per_class`` images each, so that negatives are
  hard at the class level. ``set_tree`` swaps in a rebuilt tree.
- ``HierarchicalTripletLoss`` is a triplet loss whose margin depends on the pair of classes:
  α = β + d_H(y_a, y_n) − s(y_a), with d_H the threshold of the level where the anchor's and the
  negative's classes join and s(y_a) the anchor class's mean intra-class distance.

``HTLCallback`` rebuilds the tree every epoch (or every N steps) from the model's own embeddings
and writes the tree (JSON) and a dendrogram PNG per rebuild.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import cdist, pdist
from torch.utils.data import Sampler

from training.distances import LpDistance
from training.distributed import SINGLE_PROCESS, DistInfo
from training.miners import all_triplets
from training.refresh import Refresh

log = logging.getLogger(__name__)


def dendrogram_path(out_dir: str | Path, tag: str) -> Path:
    return Path(out_dir) / f"dendrogram_{tag}.png"


@dataclass(frozen=True)
class ClassTree:
    """A hierarchy over classes 0..C-1.

    ``node[l, c]`` is the id of the node holding class c at level l (level 0: each class alone);
    ``thresholds[l]`` is the merge threshold of level l (thresholds[0] = d_0).
    """

    centers: np.ndarray  # (C, d) float32
    intra: np.ndarray  # (C,) mean distance of a class's images to its centre
    thresholds: np.ndarray  # (L+1,)
    node: np.ndarray  # (L+1, C) int
    linkage: np.ndarray  # scipy linkage matrix of the centres, for the dendrogram

    @classmethod
    def rebuild(cls, emb: np.ndarray, labels: np.ndarray, *, levels: int = 8) -> ClassTree:
        """emb: (n, d) float32 embeddings of the training set; labels: (n,) ints in 0..C-1."""
        emb = np.asarray(emb, np.float64)
        labels = np.asarray(labels)
        n_classes = int(labels.max()) + 1
        centers = np.zeros((n_classes, emb.shape[1]))
        intra = np.zeros(n_classes)
        for c in range(n_classes):
            members = emb[labels == c]
            if len(members) == 0:
                raise ValueError(f"class {c} has no images")
            centers[c] = members.mean(0)
            intra[c] = np.linalg.norm(members - centers[c], axis=1).mean()
        d0 = float(intra.mean())
        center_d = pdist(centers)
        d_max = float(center_d.max()) if len(center_d) else d0
        thresholds = np.linspace(d0, max(d_max, d0), levels + 1)
        z = linkage(centers, method="average") if n_classes > 1 else np.zeros((0, 4))
        node = np.zeros((levels + 1, n_classes), np.int64)
        node[0] = np.arange(n_classes)
        for lvl in range(1, levels + 1):
            if n_classes == 1:
                continue
            # nodes joined below d_l merge; the top level always holds everything
            t = thresholds[lvl] if lvl < levels else np.inf
            node[lvl] = fcluster(z, t=t, criterion="distance") - 1 if np.isfinite(t) else 0
        return cls(centers.astype(np.float32), intra.astype(np.float32), thresholds, node, z)

    @property
    def levels(self) -> int:
        return len(self.thresholds) - 1

    @cached_property
    def _join_level(self) -> np.ndarray:
        jl = np.full((self.n_classes, self.n_classes), self.levels, np.int64)
        for lvl in range(self.levels, -1, -1):  # top down: keep the lowest shared level
            same = self.node[lvl][:, None] == self.node[lvl][None, :]
            jl[same] = lvl
        return jl

    @property
    def n_classes(self) -> int:
        return len(self.intra)

    def join_level(self) -> np.ndarray:
        """(C, C) int: the lowest level at which classes a and b share a node (0 on the diagonal)."""
        return self._join_level

    def merge_distance(self) -> np.ndarray:
        """(C, C) float32: d_H(a, b), the threshold of the level where a and b join."""
        return self.thresholds[self._join_level].astype(np.float32)

    def nearest_classes(self, c: int, m: int) -> np.ndarray:
        """The m classes nearest to c (by join level, then centre distance), c excluded."""
        return self.neighbour_table(m)[c]

    def neighbour_table(self, m: int) -> np.ndarray:
        """(C, min(m, C-1)) int: row c holds ``nearest_classes(c, m)``."""
        m = min(m, self.n_classes - 1)
        d = cdist(self.centers, self.centers)
        np.fill_diagonal(d, np.inf)
        jl = self._join_level.astype(np.float64)
        np.fill_diagonal(jl, np.inf)
        order = np.lexsort((d, jl), axis=1)  # by join level, ties by centre distance
        return order[:, :m]

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.intra))]
        return {"thresholds": self.thresholds.tolist(), "intra": self.intra.tolist(),
                "classes": names,
                "levels": [{"threshold": float(self.thresholds[lvl]),
                            "nodes": _group(self.node[lvl], names)}
                           for lvl in range(self.levels + 1)]}

    def write(self, out_dir: str | Path, tag: str, class_names: Sequence[str] | None = None, *,
              plot: bool = True) -> Path:
        """Write ``tree_<tag>.json`` and (``plot``) ``dendrogram_<tag>.png``; returns the JSON
        path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"tree_{tag}.json"
        path.write_text(json.dumps(self.to_dict(class_names), indent=1))
        if plot and len(self.linkage):
            self.plot_dendrogram(dendrogram_path(out, tag), class_names)
        return path

    def plot_dendrogram(self, path: str | Path, class_names: Sequence[str] | None = None, *,
                        max_leaves: int = 80) -> None:
        """A dendrogram PNG of the class centres with the level thresholds dashed; above
        ``max_leaves`` classes only the top ``max_leaves`` clusters are drawn. Uses no pyplot
        state, so it may run in a background thread."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from scipy.cluster.hierarchy import dendrogram

        n = self.n_classes
        truncate = n > max_leaves
        fig = Figure(figsize=(max(6, min(n, max_leaves) * 0.18), 5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if truncate:  # leaves are clusters, labelled with their class count
            dendrogram(self.linkage, ax=ax, truncate_mode="lastp", p=max_leaves,
                       leaf_font_size=7)
        else:
            dendrogram(self.linkage, labels=list(class_names) if class_names else None, ax=ax,
                       leaf_font_size=7)
        for t in self.thresholds:
            ax.axhline(t, color="grey", lw=0.5, ls="--")
        ax.set_ylabel("centre distance (dashed: level thresholds)")
        top = f", top {max_leaves} clusters" if truncate else ""
        ax.set_title(f"class tree: {n} classes, {self.levels} levels{top}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)


def _group(node_ids: np.ndarray, names: list[str]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for c, nid in enumerate(node_ids):
        groups.setdefault(int(nid), []).append(names[c])
    return list(groups.values())


class HierarchicalSampler(Sampler[list[int]]):
    """Anchor-neighbour batches: ``anchor_classes`` random classes plus, for each, its
    ``neighbours`` nearest classes in the tree; ``per_class`` images of every class. Without a
    tree yet (``tree=None``, before the first rebuild) the neighbours are random classes."""

    def __init__(self, labels: Sequence[int], tree: ClassTree | None = None, *,
                 anchor_classes: int = 4, neighbours: int = 3, per_class: int = 4,
                 num_batches: int | None = None, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        self.by_class = {int(c): np.where(self.labels == c)[0] for c in np.unique(self.labels)}
        self.anchor_classes, self.neighbours, self.per_class = anchor_classes, neighbours, per_class
        batch = anchor_classes * (neighbours + 1) * per_class
        self.num_batches = num_batches or max(1, len(self.labels) // batch)
        self.seed, self.epoch = seed, 0
        self.tree: ClassTree | None = None
        self._neigh: dict[int, np.ndarray] | None = None
        if tree is not None:
            self.set_tree(tree)

    def set_tree(self, tree: ClassTree) -> None:
        if tree.n_classes < max(self.by_class) + 1:
            raise ValueError(f"the tree has {tree.n_classes} classes, the labels "
                             f"{max(self.by_class) + 1}")
        self.tree = tree
        table = tree.neighbour_table(self.neighbours)
        self._neigh = {c: table[c] for c in self.by_class}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 7))
        classes = np.array(sorted(self.by_class))
        for _ in range(self.num_batches):
            chosen: list[int] = []
            for a in rng.choice(classes, size=min(self.anchor_classes, len(classes)), replace=False):
                if self._neigh is not None:
                    near = self._neigh[int(a)].tolist()
                else:
                    others = classes[classes != a]
                    near = rng.choice(others, size=min(self.neighbours, len(others)),
                                      replace=False).tolist()
                for c in [int(a), *near]:
                    if c not in chosen:
                        chosen.append(c)
            batch: list[int] = []
            for c in chosen:
                idx = self.by_class[c]
                batch += rng.choice(idx, size=self.per_class, replace=len(idx) < self.per_class).tolist()
            yield batch


class HierarchicalTripletLoss:
    """max(0, d(a,p) − d(a,n) + α) over all valid in-batch triplets, α = β + d_H(y_a,y_n) − s(y_a).

    ``labels`` passed to the call are class indices 0..C-1 of the tree. The loss holds the tree
    and is updated with ``set_tree`` when the tree is rebuilt.
    """

    tuple_kind = "triplets"

    def __init__(self, tree: ClassTree | None = None, *, beta: float = 0.1, distance=None,
                 reduction: str = "nonzero", margin: float | None = None) -> None:
        # ``margin`` is β under the name the loss registry passes to every loss
        self.beta = beta if margin is None else margin
        self.distance = distance or LpDistance()
        self.reduction = reduction
        self.tree: ClassTree | None = None
        self._warned = False
        if tree is not None:
            self.set_tree(tree)
        self.last_active = self.last_total = 0
        self.last_margin_mean = 0.0

    def set_tree(self, tree: ClassTree) -> None:
        self.tree = tree
        self._dh = torch.from_numpy(tree.merge_distance())
        self._s = torch.from_numpy(tree.intra)

    def margins(self, ya: torch.Tensor, yn: torch.Tensor) -> torch.Tensor:
        if self.tree is None:
            # no tree yet: every class pair at the same distance, i.e. the triplet loss with
            # margin β (the training loop's HTLCallback sets a tree before the first step)
            if not self._warned:
                log.warning("HierarchicalTripletLoss has no class tree: margin is β=%.3g for "
                            "every triplet until set_tree is called", self.beta)
                self._warned = True
            return torch.full(ya.shape, float(self.beta))
        return self.beta + self._dh[ya, yn] - self._s[ya]

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor, indices=None) -> torch.Tensor:
        a, p, n = indices if indices is not None else all_triplets(labels)
        y = labels.cpu()
        alpha = self.margins(y[a.cpu()], y[n.cpu()]).to(emb)
        # one (n, n) distance matrix, gathered per triplet: all-triplet batches hold n^3 / C
        # triplets, and per-triplet embedding gathers would be (n^3 / C, d)
        d = self.distance.pairwise(emb, emb)
        terms = F.relu(d[a, p] - d[a, n] + alpha)
        self.last_total = len(terms)
        active = terms > 0
        self.last_active = int(active.sum())
        self.last_margin_mean = float(alpha.mean()) if len(alpha) else 0.0
        if len(terms) == 0:
            return emb.sum() * 0
        if self.reduction == "nonzero":
            return terms.sum() / active.sum().clamp_min(1)
        return terms.mean()


class HTLCallback(Refresh):
    """Rebuilds the class tree from the model's embeddings every epoch (``every_steps=0``) or
    every N optimiser steps, hands it to the sampler and/or the loss, and writes
    ``tree_<tag>.json`` + ``dendrogram_<tag>.png`` into ``out_dir`` (default: ``<run>/htl``;
    on rank 0 only). ``max_per_class`` bounds the images embedded per rebuild; ``seconds``
    adds up the time spent rebuilding. See ``training.refresh.Refresh`` for the hooks.
    """

    label = "tree"

    def __init__(self, *, sampler: HierarchicalSampler | None = None,
                 loss: HierarchicalTripletLoss | None = None, levels: int = 8, every_steps: int = 0, out_dir: str | Path | None = None,
                 class_names: Sequence[str] | None = None, write: bool = True,
                 embedder=None, max_per_class: int | None = None,
                 info: DistInfo = SINGLE_PROCESS) -> None:
        super().__init__(embedder=embedder, every_steps=every_steps,
                         max_per_class=max_per_class, info=info)
        self.sampler, self.loss, self.levels = sampler, loss, levels
        self.out_dir, self.class_names = out_dir, class_names
        self.write = write and info.is_main
        self.tree: ClassTree | None = None
        # dendrograms are drawn on one background thread: a plot of 50 classes takes about
        # as long as embedding 300 images, time the training loop need not wait for
        self._plots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dendrogram")
        self._pending: list[Future] = []

    def on_train_start(self, state) -> None:
        super().on_train_start(state)
        if self.out_dir is None and getattr(state, "out", None) is not None:
            self.out_dir = Path(state.out) / "htl"
        if self.class_names is None and hasattr(state.dataset, "classes"):
            self.class_names = list(state.dataset.classes)

    def refresh(self, tag: str) -> None:
        tree = ClassTree.rebuild(self.embedder(), self.embedder.labels, levels=self.levels)
        if self.sampler is not None:
            self.sampler.set_tree(tree)
        if self.loss is not None:
            self.loss.set_tree(tree)
        self.tree = tree
        if self.write and self.out_dir is not None:
            tree.write(self.out_dir, tag, self.class_names, plot=False)
            if len(tree.linkage):  # drawn off the training loop's path
                self._pending.append(self._plots.submit(
                    tree.plot_dendrogram, dendrogram_path(self.out_dir, tag), self.class_names))
        log.info("class tree rebuilt (%s): thresholds %.3f..%.3f", tag, tree.thresholds[0],
                 tree.thresholds[-1])

    def wait(self) -> None:
        """Block until every dendrogram is written; re-raises a plotting error."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def on_train_end(self, state) -> None:
        self.wait()
