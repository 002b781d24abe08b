"""Anchor-neighbour batches over a class tree (the sampler of the hierarchical triplet loss, Ge et al. 2018)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from training.class_tree import ClassTree


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
