"""Parts beyond the P x K baseline, built by name for the training loop: tree and mining samplers, their refresh callbacks."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch.utils.data import Sampler

from training.distributed import SINGLE_PROCESS, DistInfo
from training.hard_negatives import HardNegativeCallback, HardNegativeSampler
from training.htl import HierarchicalSampler, HierarchicalTripletLoss, HTLCallback
from training.refresh import Refresh

log = logging.getLogger(__name__)

# Batch samplers that need the current model's embeddings of the training set; the loop's
# own (P x K, pairs) stay in training.train.
REFRESH_SAMPLERS = ("hierarchical", "hard-negatives")


def build_refresh_sampler(name: str, targets: Sequence[int], *, p: int, k: int,
                          num_batches: int | None, seed: int,
                          neighbours: int = 3) -> Sampler[list[int]]:
    """The named batch sampler over training targets (class indices), keeping a P x K batch:
    P classes = anchors plus, for each, its ``neighbours`` nearest classes in the tree
    ("hierarchical") or the classes of its hardest mined negatives ("hard-negatives");
    K images of each."""
    anchors = max(1, p // (neighbours + 1))
    if name == "hierarchical":
        return HierarchicalSampler(targets, anchor_classes=anchors, neighbours=neighbours,
                                   per_class=k, num_batches=num_batches, seed=seed)
    if name == "hard-negatives":
        return HardNegativeSampler(targets, anchors=anchors, negatives=neighbours,
                                   per_class=max(2, k), num_batches=num_batches, seed=seed)
    raise ValueError(f"unknown refresh sampler {name!r}; valid: {', '.join(REFRESH_SAMPLERS)}")


def refresh_callbacks(*, loss_fn, batch_sampler, every_steps: int = 0,
                      max_per_class: int | None = None, tree_levels: int = 8,
                      mining_k: int = 10, info: DistInfo = SINGLE_PROCESS) -> list[Refresh]:
    """The callbacks that keep a class tree (for an HTL loss and/or a hierarchical sampler)
    or the mined hard negatives up to date: rebuilt every epoch (``every_steps=0``) or every
    ``every_steps`` steps, from at most ``max_per_class`` images per class. Empty when neither
    part is in use."""
    inner = getattr(batch_sampler, "inner", batch_sampler)  # under a ShardedBatchSampler
    out: list[Refresh] = []
    tree_sampler = inner if isinstance(inner, HierarchicalSampler) else None
    tree_loss = loss_fn if isinstance(loss_fn, HierarchicalTripletLoss) else None
    if tree_sampler is not None or tree_loss is not None:
        out.append(HTLCallback(sampler=tree_sampler, loss=tree_loss, levels=tree_levels,
                               every_steps=every_steps, max_per_class=max_per_class, info=info))
    if isinstance(inner, HardNegativeSampler):
        out.append(HardNegativeCallback(sampler=inner, k=mining_k, every_steps=every_steps,
                                        max_per_class=max_per_class, info=info))
    return out
