"""Refreshes beyond the P x K baseline: the class-tree (HTL) and hard-negative callbacks that re-embed
the training set during training, and the samplers and callbacks the loop builds by name."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from torch.utils.data import Sampler

from training.class_tree import ClassTree, dendrogram_path
from training.engine.distributed import SINGLE_PROCESS, DistInfo
from training.engine.refresh import Refresh
from training.losses.hierarchical_triplet import HierarchicalTripletLoss
from training.miners.hard_negatives import nearest_other_class
from training.samplers.hard_negatives import HardNegativeSampler
from training.samplers.hierarchical import HierarchicalSampler

log = logging.getLogger(__name__)

# Batch samplers that need the current model's embeddings of the training set; the loop's
# own (P x K, pairs) stay in training.engine.train.
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


class HTLCallback(Refresh):
    """Rebuilds the class tree from the model's embeddings every epoch (``every_steps=0``) or
    every N optimiser steps, hands it to the sampler and/or the loss, and writes
    ``tree_<tag>.json`` + ``dendrogram_<tag>.png`` into ``out_dir`` (default: ``<run>/htl``;
    on rank 0 only). ``max_per_class`` bounds the images embedded per rebuild; ``seconds``
    adds up the time spent rebuilding. See ``training.engine.refresh.Refresh`` for the hooks.
    """

    label = "tree"

    def __init__(self, *, sampler: HierarchicalSampler | None = None,
                 loss: HierarchicalTripletLoss | None = None, levels: int = 8, every_steps: int = 0, out_dir: str | Path | None = None,
                 class_names: Sequence[str] | None = None, write: bool = True,
                 embedder=None, max_per_class: int | None = None,
                 info: DistInfo = SINGLE_PROCESS) -> None:
        super().__init__(embedder=embedder, every_steps=every_steps,
                         max_per_class=max_per_class, info=info)
        self.sampler, self.loss, self.levels = sampler, loss, levels
        self.out_dir, self.class_names = out_dir, class_names
        self.write = write and info.is_main
        self.tree: ClassTree | None = None
        # dendrograms are drawn on one background thread: a plot of 50 classes takes about
        # as long as embedding 300 images, time the training loop need not wait for
        self._plots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dendrogram")
        self._pending: list[Future] = []

    def on_train_start(self, state) -> None:
        super().on_train_start(state)
        if self.out_dir is None and getattr(state, "out", None) is not None:
            self.out_dir = Path(state.out) / "htl"
        if self.class_names is None and hasattr(state.dataset, "classes"):
            self.class_names = list(state.dataset.classes)

    def refresh(self, tag: str) -> None:
        tree = ClassTree.rebuild(self.embedder(), self.embedder.labels, levels=self.levels)
        if self.sampler is not None:
            self.sampler.set_tree(tree)
        if self.loss is not None:
            self.loss.set_tree(tree)
        self.tree = tree
        if self.write and self.out_dir is not None:
            tree.write(self.out_dir, tag, self.class_names, plot=False)
            if len(tree.linkage):  # drawn off the training loop's path
                self._pending.append(self._plots.submit(
                    tree.plot_dendrogram, dendrogram_path(self.out_dir, tag), self.class_names))
        log.info("class tree rebuilt (%s): thresholds %.3f..%.3f", tag, tree.thresholds[0],
                 tree.thresholds[-1])

    def wait(self) -> None:
        """Block until every dendrogram is written; re-raises a plotting error."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def on_train_end(self, state) -> None:
        self.wait()


class HardNegativeCallback(Refresh):
    """Re-mines every epoch (or every ``every_steps`` steps): embeds the training set with the
    current model, finds each image's ``k`` nearest other-class neighbours with FAISS and hands
    them to the sampler. ``max_per_class`` bounds the images embedded (and mined) per refresh;
    see ``training.engine.refresh.Refresh`` for the hooks.
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
