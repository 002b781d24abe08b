"""Metric-learning losses on embeddings plus the index tuples a miner chose.

Each loss keeps ``last_active`` (tuples with non-zero loss) and ``last_total`` after a call,
so the training loop can report the active fraction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.distances import LpDistance
from training.htl import HierarchicalTripletLoss
from training.miners import PairIndices, TripletIndices, pairs_to_triplets, triplets_to_pairs


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


# htl: hierarchical triplet loss (Ge et al. 2018); its margin is β, its tree comes from
# training.htl.HTLCallback (the loop adds it); all in-batch triplets, as in the paper.
LOSSES = {"contrastive": ContrastiveLoss, "triplet": TripletLoss,
          "htl": HierarchicalTripletLoss}
# The miner each loss uses when none is named.
DEFAULT_MINER = {"contrastive": "all-pairs", "triplet": "batch-hard", "htl": "all-triplets"}


def get_loss(name: str, **kwargs):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**kwargs)


__all__ = ["ContrastiveLoss", "TripletLoss", "LOSSES", "get_loss", "PairIndices", "TripletIndices"]
