"""Contrastive loss (Hadsell, Chopra & LeCun 2006) on the pairs a miner chose."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.distances import LpDistance
from training.miners.in_batch import (
    triplets_to_pairs,
)


class ContrastiveLoss:
    """Hadsell, Chopra & LeCun (2006): y·d² + (1-y)·max(0, m - d)², averaged over pairs.

    With ``squared_margin=True`` the negative term is max(0, m² - d²) instead.
    """

    tuple_kind = "pairs"

    def __init__(self, *, margin: float = 1.0, squared_margin: bool = False, distance=None):
        self.margin = margin
        self.squared_margin = squared_margin
        self.distance = distance or LpDistance()
        self.last_active = self.last_total = 0

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor, indices) -> torch.Tensor:
        if len(indices) == 3:
            indices = triplets_to_pairs(indices)
        a1, p, a2, n = indices
        dp = self.distance.pair(emb[a1], emb[p])
        dn = self.distance.pair(emb[a2], emb[n])
        pos_term = dp.pow(2)
        if self.squared_margin:
            neg_term = F.relu(self.margin ** 2 - dn.pow(2))
        else:
            neg_term = F.relu(self.margin - dn).pow(2)
        terms = torch.cat([pos_term, neg_term])
        self.last_total = len(terms)
        self.last_active = int((terms > 0).sum())
        return terms.mean() if len(terms) else emb.sum() * 0
