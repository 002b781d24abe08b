"""Batches built from dataset-wide hard negatives (each anchor with the classes of its nearest other-class neighbours)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class HardNegativeSampler(Sampler[list[int]]):
    """Batches built from dataset-wide hard negatives.

    Each batch takes ``anchors`` anchor images (a fresh permutation each epoch); for each, the
    classes of its ``negatives`` hardest other-class neighbours (distinct classes, nearest
    first). The anchor and each mined negative enter the batch with ``per_class`` - 1 more images
    of their own class, so every mined negative is also an anchor with positives, and an
    in-batch miner (batch-hard) then finds the hard triplets. Until ``set_neighbours`` is
    called, the negative classes are drawn at random (a P x K batch).
    """

    def __init__(self, labels: Sequence[int], *, anchors: int = 4, negatives: int = 3,
                 per_class: int = 4, num_batches: int | None = None, seed: int = 0) -> None:
        if anchors < 1 or negatives < 1 or per_class < 2:
            raise ValueError("need anchors >= 1, negatives >= 1 and per_class >= 2")
        self.labels = np.asarray(labels)
        self.by_class = {int(c): np.where(self.labels == c)[0] for c in np.unique(self.labels)}
        if len(self.by_class) < 2:
            raise ValueError("hard-negative batches need at least two classes")
        self.anchors, self.negatives, self.per_class = anchors, negatives, per_class
        batch = anchors * (negatives + 1) * per_class
        self.num_batches = num_batches or max(1, len(self.labels) // batch)
        self.seed, self.epoch = seed, 0
        self.anchor_pool = np.array([i for c, idx in self.by_class.items() if len(idx) >= 2
                                     for i in idx])
        self.hard: dict[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_neighbours(self, rows: np.ndarray, neighbours: np.ndarray) -> None:
        """rows: (m,) dataset indices that were mined; neighbours: (m, k) dataset indices of
        their hardest other-class neighbours (nearest first, -1 pads)."""
        self.hard = {int(r): nb[nb >= 0] for r, nb in zip(rows, neighbours, strict=True)}
        pool = [r for r in self.hard if len(self.by_class[int(self.labels[r])]) >= 2]
        self.anchor_pool = np.array(pool if pool else self.anchor_pool)

    def __len__(self) -> int:
        return self.num_batches

    def _negative_classes(self, a: int, rng: np.random.Generator) -> list[tuple[int, int | None]]:
        """[(class, mined image or None)] for anchor a."""
        ya = int(self.labels[a])
        out: list[tuple[int, int | None]] = []
        seen = {ya}
        for n in (self.hard.get(a, ()) if self.hard is not None else ()):
            yn = int(self.labels[n])
            if yn not in seen:
                seen.add(yn)
                out.append((yn, int(n)))
                if len(out) == self.negatives:
                    return out
        others = [c for c in self.by_class if c not in seen]
        fill = rng.choice(others, size=min(self.negatives - len(out), len(others)), replace=False)
        return out + [(int(c), None) for c in fill]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 11))
        order = rng.permutation(self.anchor_pool)
        pos = 0
        for _ in range(self.num_batches):
            forced: dict[int, list[int]] = {}  # class -> images that must be in the batch
            for _ in range(self.anchors):
                if pos == len(order):
                    order, pos = rng.permutation(self.anchor_pool), 0
                a = int(order[pos])
                pos += 1
                forced.setdefault(int(self.labels[a]), []).append(a)
                for c, img in self._negative_classes(a, rng):
                    items = forced.setdefault(c, [])
                    if img is not None:
                        items.append(img)
            batch: list[int] = []
            for c, items in forced.items():
                items = list(dict.fromkeys(items))[:self.per_class]
                pool = np.setdiff1d(self.by_class[c], items)
                need = self.per_class - len(items)
                if need > 0:
                    items += rng.choice(pool if len(pool) else self.by_class[c], size=need,
                                        replace=len(pool) < need).tolist()
                batch += items
            yield batch
