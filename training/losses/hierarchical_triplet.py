"""Hierarchical triplet loss (Ge et al., ECCV 2018): a triplet loss whose margin grows with the classes' distance in a class tree."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from training.class_tree import ClassTree
from training.distances import LpDistance
from training.miners.in_batch import all_triplets

log = logging.getLogger(__name__)


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
