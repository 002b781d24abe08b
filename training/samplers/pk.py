"""Batch samplers for metric learning."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[list[int]]):
    """Batches of P classes x K images each (classes with fewer than K images are sampled
    with replacement), so that every anchor has positives and negatives in its batch.

    ``num_batches`` batches per epoch (default: as many as cover the dataset once); the
    random stream depends on ``seed`` and the epoch set with ``set_epoch``.
    """

    def __init__(self, labels: Sequence[int], *, p: int, k: int, num_batches: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.labels = np.asarray(labels)
        self.p, self.k = p, k
        self.by_class = {c: np.where(self.labels == c)[0] for c in np.unique(self.labels)}
        self.classes = np.array(sorted(c for c, idx in self.by_class.items() if len(idx) >= 2))
        if len(self.classes) < 2:
            raise ValueError("PKSampler needs at least two classes with two or more images")
        if p > len(self.classes):
            raise ValueError(f"p={p} exceeds the {len(self.classes)} classes with >= 2 images")
        total = num_batches or max(1, len(self.labels) // (p * k))
        self.num_batches = total
        self.seed, self.epoch = seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, self.num_batches, self.world_size))

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        for b in range(self.num_batches):
            classes = rng.choice(self.classes, size=self.p, replace=False)
            batch: list[int] = []
            for c in classes:
                idx = self.by_class[c]
                batch += rng.choice(idx, size=self.k, replace=len(idx) < self.k).tolist()
            if b % self.world_size == self.rank:  # each rank takes a disjoint share of batches
                yield batch


class PairSampler(Sampler[list[int]]):
    """Batches of ``pairs_per_batch`` image pairs for the contrastive loss, a
    ``positive_fraction`` of them genuine (same class). A batch is the flat index list
    [a0, b0, a1, b1, ...]; ``miners.AdjacentPairsMiner`` turns it back into pairs.
    """

    def __init__(self, labels: Sequence[int], *, pairs_per_batch: int,
                 positive_fraction: float = 0.5, num_batches: int | None = None,
                 seed: int = 0) -> None:
        if not 0 <= positive_fraction <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.labels = np.asarray(labels)
        self.by_class = {c: np.where(self.labels == c)[0] for c in np.unique(self.labels)}
        self.multi = np.array(sorted(c for c, idx in self.by_class.items() if len(idx) >= 2))
        if positive_fraction > 0 and len(self.multi) == 0:
            raise ValueError("genuine pairs need a class with two or more images")
        if len(self.by_class) < 2:
            raise ValueError("impostor pairs need at least two classes")
        self.pairs_per_batch = pairs_per_batch
        self.n_pos = int(round(pairs_per_batch * positive_fraction))
        self.num_batches = num_batches or max(1, len(self.labels) // (2 * pairs_per_batch))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 1))
        n = len(self.labels)
        for _ in range(self.num_batches):
            batch: list[int] = []
            for c in rng.choice(self.multi, size=self.n_pos) if self.n_pos else []:
                batch += rng.choice(self.by_class[c], 2, replace=False).tolist()
            while len(batch) < 2 * self.pairs_per_batch:
                i, j = rng.integers(0, n, size=2)
                if self.labels[i] != self.labels[j]:
                    batch += [int(i), int(j)]
            yield batch
