"""Metric-learning losses on embeddings plus the index tuples a miner chose: the registry by name.

Each loss keeps ``last_active`` (tuples with non-zero loss) and ``last_total`` after a call,
so the training loop can report the active fraction.
"""

from __future__ import annotations

from training.losses.contrastive import ContrastiveLoss
from training.losses.hierarchical_triplet import HierarchicalTripletLoss
from training.losses.triplet import TripletLoss

# htl: hierarchical triplet loss (Ge et al. 2018); its margin is β, its tree comes from
# training.engine.refresh_callbacks.HTLCallback (the loop adds it); all in-batch triplets, as in
# the paper.
LOSSES = {"contrastive": ContrastiveLoss, "triplet": TripletLoss,
          "htl": HierarchicalTripletLoss}
# The miner each loss uses when none is named.
DEFAULT_MINER = {"contrastive": "all-pairs", "triplet": "batch-hard", "htl": "all-triplets"}


def get_loss(name: str, **kwargs):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**kwargs)

