"""Online in-batch miners: (embeddings, labels) -> index tuples for a loss.

Pair miners return (a1, p, a2, n): positive pairs (a1[i], p[i]) and negative pairs (a2[j], n[j]).
Triplet miners return (a, p, n). Each miner keeps ``last_count``, the tuples it produced.
"""

from __future__ import annotations

import torch

from training.distances import LpDistance

PairIndices = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
TripletIndices = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) -> positive mask (same label, not self) and negative mask, both (n, n) bool."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def all_triplets(labels: torch.Tensor) -> TripletIndices:
    pos, neg = label_masks(labels)
    valid = pos[:, :, None] & neg[:, None, :]
    a, p, n = torch.where(valid)
    return a, p, n


class AllPairsMiner:
    """Every positive and every negative pair in the batch."""

    kind = "pairs"

    def __init__(self) -> None:
        self.last_count = 0

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor) -> PairIndices:
        pos, neg = label_masks(labels)
        pos = torch.triu(pos, 1)
        neg = torch.triu(neg, 1)
        a1, p = torch.where(pos)
        a2, n = torch.where(neg)
        self.last_count = len(a1) + len(a2)
        return a1, p, a2, n


class AllTripletsMiner:
    """Every valid (anchor, positive, negative) triplet in the batch."""

    kind = "triplets"

    def __init__(self) -> None:
        self.last_count = 0

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor) -> TripletIndices:
        t = all_triplets(labels)
        self.last_count = len(t[0])
        return t


class _DistanceMiner:
    kind = "triplets"

    def __init__(self, *, distance=None) -> None:
        self.distance = distance or LpDistance()
        self.last_count = 0

    def _dist(self, emb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.distance.pairwise(emb, emb)


class BatchHardMiner(_DistanceMiner):
    """Per anchor, its hardest (farthest) positive and hardest (nearest) negative
    (Hermans et al., "In Defense of the Triplet Loss")."""

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor) -> TripletIndices:
        d = self._dist(emb)
        pos, neg = label_masks(labels)
        has = pos.any(1) & neg.any(1)
        anchors = torch.where(has)[0]
        if len(anchors) == 0:
            self.last_count = 0
            e = torch.zeros(0, dtype=torch.long, device=emb.device)
            return e, e, e
        p = d.masked_fill(~pos, float("-inf"))[anchors].argmax(1)
        n = d.masked_fill(~neg, float("inf"))[anchors].argmin(1)
        self.last_count = len(anchors)
        return anchors, p, n


class SemiHardMiner(_DistanceMiner):
    """Triplets whose negative is farther than the positive but inside the margin:
    d(a,p) < d(a,n) < d(a,p) + margin (Schroff et al., FaceNet)."""

    def __init__(self, *, margin: float = 0.2, distance=None) -> None:
        super().__init__(distance=distance)
        self.margin = margin

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor) -> TripletIndices:
        d = self._dist(emb)
        a, p, n = all_triplets(labels)
        dap, dan = d[a, p], d[a, n]
        keep = (dan > dap) & (dan < dap + self.margin)
        self.last_count = int(keep.sum())
        return a[keep], p[keep], n[keep]


class HardCasesMiner(_DistanceMiner):
    """Triplets where the negative is about as near as the positive: |d(a,n) - d(a,p)| < band."""

    def __init__(self, *, band: float = 0.1, distance=None) -> None:
        super().__init__(distance=distance)
        self.band = band

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor) -> TripletIndices:
        d = self._dist(emb)
        a, p, n = all_triplets(labels)
        keep = (d[a, n] - d[a, p]).abs() < self.band
        self.last_count = int(keep.sum())
        return a[keep], p[keep], n[keep]


class AdjacentPairsMiner:
    """The pairs a ``samplers.PairSampler`` batch was built of: (0, 1), (2, 3), ...; each is
    a positive or a negative pair according to the labels."""

    kind = "pairs"

    def __init__(self) -> None:
        self.last_count = 0

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor) -> PairIndices:
        if len(labels) % 2:
            raise ValueError("adjacent pairs need an even batch (a PairSampler batch)")
        a = torch.arange(0, len(labels), 2, device=labels.device)
        b = a + 1
        same = labels[a] == labels[b]
        self.last_count = len(a)
        return a[same], b[same], a[~same], b[~same]


MINERS = {
    "adjacent-pairs": AdjacentPairsMiner,
    "all-pairs": AllPairsMiner,
    "all-triplets": AllTripletsMiner,
    "batch-hard": BatchHardMiner,
    "semi-hard": SemiHardMiner,
    "hard-cases": HardCasesMiner,
}


def triplets_to_pairs(t: TripletIndices) -> PairIndices:
    """(a, p, n) -> positive pairs (a, p) and negative pairs (a, n), duplicates removed."""
    a, p, n = t
    pos = torch.unique(torch.stack([a, p], 1), dim=0) if len(a) else torch.stack([a, p], 1)
    neg = torch.unique(torch.stack([a, n], 1), dim=0) if len(a) else torch.stack([a, n], 1)
    return pos[:, 0], pos[:, 1], neg[:, 0], neg[:, 1]


def pairs_to_triplets(pr: PairIndices) -> TripletIndices:
    """Combine every positive pair with every negative pair sharing its anchor."""
    a1, p, a2, n = pr
    match = a1[:, None] == a2[None, :]
    i, j = torch.where(match)
    return a1[i], p[i], n[j]
