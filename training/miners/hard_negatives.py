"""Dataset-wide hard-negative mining: every image's nearest other-class neighbours (exact FAISS kNN), and batches built from them."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
from torch.utils.data import Sampler

from training.distributed import SINGLE_PROCESS, DistInfo
from training.refresh import Refresh

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


class HardNegativeCallback(Refresh):
    """Re-mines every epoch (or every ``every_steps`` steps): embeds the training set with the
    current model, finds each image's ``k`` nearest other-class neighbours with FAISS and hands
    them to the sampler. ``max_per_class`` bounds the images embedded (and mined) per refresh;
    see ``training.refresh.Refresh`` for the hooks.
    """

    label = "mining"

    def __init__(self, *, sampler: HardNegativeSampler, k: int = 10, every_steps: int = 0,
                 embedder=None, max_per_class: int | None = None,
                 info: DistInfo = SINGLE_PROCESS) -> None:
        super().__init__(embedder=embedder, every_steps=every_steps,
                         max_per_class=max_per_class, info=info)
        self.sampler, self.k = sampler, k
        self.history: list[dict] = []
        self.last: dict = {}

    def on_epoch_end(self, state) -> None:
        super().on_epoch_end(state)
        if getattr(state, "history", None) and self.last:
            state.history[-1]["mined_nn_is_other_class"] = self.last["nn_is_other_class"]

    def refresh(self, tag: str) -> None:
        emb = self.embedder()
        hn = nearest_other_class(emb, self.embedder.labels, k=self.k)
        idx = np.asarray(self.embedder.indices)
        mapped = np.where(hn.neighbours >= 0, idx[np.maximum(hn.neighbours, 0)], -1)
        self.sampler.set_neighbours(idx, mapped)
        hardest = hn.distances[:, 0][np.isfinite(hn.distances[:, 0])]
        stats = {"tag": tag, "nn_is_other_class": hn.nn_is_other_class,
                 "mean_hardest_distance": float(hardest.mean()) if len(hardest) else float("nan")}
        self.history.append(stats)
        self.last = stats
        log.info("hard negatives mined (%s): nearest neighbour of another class for %.1f%% of "
                 "images, mean hardest distance %.3f", tag, 100 * stats["nn_is_other_class"],
                 stats["mean_hardest_distance"])
