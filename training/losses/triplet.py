"""Triplet loss (Weinberger; Schroff et al.) on the triplets a miner chose."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.distances import LpDistance
from training.miners.in_batch import (
    pairs_to_triplets,
)


class TripletLoss:
    """Weinberger/Schroff: max(0, d(a,p) - d(a,n) + margin), averaged over triplets.

    ``distance`` chooses L2 (plain or squared) or cosine; ``reduction="nonzero"`` averages only
    over the active triplets (as pytorch-metric-learning's default reducer does).
    """

    tuple_kind = "triplets"

    def __init__(self, *, margin: float = 0.2, distance=None, reduction: str = "mean"):
        if reduction not in ("mean", "nonzero"):
            raise ValueError("reduction must be 'mean' or 'nonzero'")
        self.margin = margin
        self.distance = distance or LpDistance()
        self.reduction = reduction
        self.last_active = self.last_total = 0

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor, indices) -> torch.Tensor:
        if len(indices) == 4:
            indices = pairs_to_triplets(indices)
        a, p, n = indices
        terms = F.relu(self.distance.pair(emb[a], emb[p]) - self.distance.pair(emb[a], emb[n])
                       + self.margin)
        self.last_total = len(terms)
        active = terms > 0
        self.last_active = int(active.sum())
        if len(terms) == 0:
            return emb.sum() * 0
        if self.reduction == "nonzero":
            return terms.sum() / active.sum().clamp_min(1)
        return terms.mean()
