"""The class tree of the hierarchical triplet loss (Ge et al., ECCV 2018), rebuilt from embeddings.

The hierarchical triplet loss has three parts that compose like the rest of the package:

- ``ClassTree.rebuild(emb, labels, levels=L)`` builds the class hierarchy from the *current*
  model's embeddings of the training set: class centres are merged agglomeratively (nearest
  first, average linkage); level l merges nodes closer than the threshold d_l, with thresholds
  spaced evenly from d_0 = the mean intra-class distance to d_L = the largest centre distance.
- ``HierarchicalSampler`` (``training.samplers.hierarchical``) draws batches of ``anchor_classes`` random classes, each with its
  ``neighbours`` nearest classes in the tree, ``per_class`` images each, so that negatives are
  hard at the class level. ``set_tree`` swaps in a rebuilt tree.
- ``HierarchicalTripletLoss`` (``training.losses.hierarchical_triplet``) is a triplet loss whose margin depends on the pair of classes:
  α = β + d_H(y_a, y_n) − s(y_a), with d_H the threshold of the level where the anchor's and the
  negative's classes join and s(y_a) the anchor class's mean intra-class distance.

``HTLCallback`` (``training.engine.refresh_callbacks``) rebuilds the tree every epoch (or every N steps) from the model's own embeddings
and writes the tree (JSON) and a dendrogram PNG per rebuild.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import cdist, pdist

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



