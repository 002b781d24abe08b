"""Dataset-wide hard-negative mining: every image's nearest other-class neighbours (exact FAISS kNN)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HardNegatives:
    """``neighbours[i]``: row indices of the k nearest rows of another class than row i,
    nearest first, -1 where fewer exist; ``distances`` the matching L2 distances (inf pads).
    ``nn_is_other_class``: fraction of rows whose nearest other row has another class
    (1 - Recall@1 on the training set: how hard the mined set is)."""

    neighbours: np.ndarray  # (n, k) int64
    distances: np.ndarray  # (n, k) float32
    nn_is_other_class: float


def nearest_other_class(emb: np.ndarray, labels: Sequence[int], *, k: int = 10,
                        chunk: int = 4096) -> HardNegatives:
    """Exact kNN (faiss.IndexFlatL2) of every row among all rows, keeping other-class ones.

    emb: (n, d) float32; labels: (n,). Searching k + (largest class size) neighbours
    guarantees k other-class ones whenever that many exist.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    labels = np.asarray(labels)
    if emb.ndim != 2 or len(emb) != len(labels):
        raise ValueError(f"emb must be (n, d) with n = len(labels); got {emb.shape}, {len(labels)}")
    if k < 1:
        raise ValueError("k must be >= 1")
    n = len(emb)
    largest = int(np.unique(labels, return_counts=True)[1].max()) if n else 0
    kk = min(n, k + largest)
    index = faiss.IndexFlatL2(emb.shape[1])
    index.add(emb)
    neighbours = np.full((n, k), -1, np.int64)
    distances = np.full((n, k), np.inf, np.float32)
    first_other = 0
    for s in range(0, n, chunk):
        d2, nb = index.search(emb[s:s + chunk], kk)
        rows = np.arange(s, min(s + chunk, n))
        not_self = nb != rows[:, None]
        other = (labels[np.maximum(nb, 0)] != labels[rows][:, None]) & (nb >= 0)
        # nearest row that is not the query itself: does it belong to another class?
        first = np.argmax(not_self, axis=1)
        first_other += int(other[np.arange(len(rows)), first].sum())
        order = np.argsort(~other, axis=1, kind="stable")[:, :k]  # other-class first, by distance
        take = np.take_along_axis(other, order, 1)
        nbk = np.take_along_axis(nb, order, 1)
        dk = np.sqrt(np.maximum(np.take_along_axis(d2, order, 1), 0))
        width = nbk.shape[1]
        neighbours[rows, :width] = np.where(take, nbk, -1)
        distances[rows, :width] = np.where(take, dk, np.inf)
    return HardNegatives(neighbours, distances, first_other / max(n, 1))



