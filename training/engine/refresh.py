"""Dataset-wide refreshes during training: a cached eval view of the training set, re-embedded every epoch or N steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from training.engine.distributed import SINGLE_PROCESS, DistInfo, embed_dataset

log = logging.getLogger(__name__)


class CachedImages(Dataset):
    """A deterministic (eval-transform) dataset whose items are decoded once and kept in memory
    as float16, so that re-embedding the training set every epoch costs forward passes only.

    ``base[i]`` must return (tensor, label, ...); items come back as (float32 tensor, label).
    Memory: n x C x H x W x 2 bytes (3,000 RGB images at 64 px: 74 MB).
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self._cache: dict[int, tuple[torch.Tensor, int]] = {}

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        hit = self._cache.get(i)
        if hit is None:
            x, y, *_ = self.base[i]
            hit = self._cache[i] = (x.to(torch.float16), int(y))
        return hit[0].float(), hit[1]


def subsample_per_class(labels: Sequence[int], max_per_class: int | None, *,
                        seed: int = 0) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` items of each class (None: all)."""
    labels = np.asarray(labels)
    if max_per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        keep.append(idx if len(idx) <= max_per_class
                    else rng.choice(idx, max_per_class, replace=False))
    return np.sort(np.concatenate(keep))


class DatasetEmbedder:
    """() -> (n, d) float32 embeddings of a fixed subset of the training set by the current
    model (the ``embed_fn`` the refresh callbacks take). Rank-aware: under DDP every rank
    embeds a shard and all ranks get the same matrix."""

    def __init__(self, model: nn.Module, dataset: Dataset, *, labels: Sequence[int],
                 max_per_class: int | None = None, info: DistInfo = SINGLE_PROCESS,
                 batch_size: int = 128, cache: bool = True, seed: int = 0) -> None:
        self.model = model
        self.dataset = CachedImages(dataset) if cache else dataset
        self.indices = subsample_per_class(labels, max_per_class, seed=seed)
        self.labels = np.asarray(labels)[self.indices]
        self.info, self.batch_size = info, batch_size

    def __call__(self) -> np.ndarray:
        return embed_dataset(self.model, self.dataset, info=self.info, indices=self.indices,
                             batch_size=self.batch_size)


class Refresh:
    """A training-loop callback that re-embeds the training set with the current model every
    epoch (``every_steps=0``) or every ``every_steps`` optimiser steps and calls
    ``refresh(tag)``; subclasses (tree rebuilds, hard-negative mining) say what to do with it.

    Hooks take the loop's ``TrainState`` (``training.engine.callbacks``): ``on_train_start`` builds a
    ``DatasetEmbedder`` over ``state.dataset``'s samples with the eval transform of
    ``state.spec`` unless one was given; ``seconds`` adds up the time spent refreshing, so that
    its share of training time can be reported.
    """

    def __init__(self, *, embedder: DatasetEmbedder | None = None, every_steps: int = 0,
                 max_per_class: int | None = None, info: DistInfo = SINGLE_PROCESS,
                 batch_size: int = 128) -> None:
        if every_steps < 0:
            raise ValueError("every_steps must be >= 0 (0: once per epoch)")
        self.embedder = embedder
        self.every_steps, self.max_per_class = every_steps, max_per_class
        self.info, self.batch_size = info, batch_size
        self.seconds = 0.0
        self.count = 0

    def refresh(self, tag: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _timed(self, tag: str) -> None:
        if self.embedder is None:
            raise RuntimeError(f"{type(self).__name__} has no embedder: pass one, or let "
                               "on_train_start build it from the training state")
        t0 = time.perf_counter()
        self.refresh(tag)
        self.seconds += time.perf_counter() - t0
        self.count += 1

    def on_train_start(self, state) -> None:
        if self.embedder is None:
            from training.data.folders import LabelledImages
            from training.data.transforms import eval_transform

            ds = LabelledImages(state.dataset.samples, eval_transform(state.spec))
            self.embedder = DatasetEmbedder(state.model, ds, labels=ds.targets,
                                            max_per_class=self.max_per_class, info=self.info,
                                            batch_size=self.batch_size,
                                            seed=int(state.config.get("seed", 0)))

    label = "refresh"  # history column prefix: "<label>_seconds", "<label>s"

    def on_epoch_end(self, state) -> None:
        """Adds this epoch's refresh time and count to ``state.history[-1]`` (metrics.csv)."""
        done = getattr(self, "_done", (0.0, 0))
        if getattr(state, "history", None):
            state.history[-1][f"{self.label}_seconds"] = self.seconds - done[0]
            state.history[-1][f"{self.label}s"] = self.count - done[1]
        self._done = (self.seconds, self.count)

    def on_epoch_start(self, state) -> None:
        """Refreshes once per epoch, and before the first step in any case."""
        if self.every_steps == 0 or self.count == 0:
            self._timed(f"epoch{state.epoch + 1:03d}")

    def on_step_end(self, state) -> None:
        """``state.step``: optimiser steps taken so far (1-based)."""
        if self.every_steps and state.step % self.every_steps == 0:
            self._timed(f"step{state.step:06d}")
