"""Embedding many image files for indexing: DataLoader workers decode while the model runs."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from training.models.embedder import Embedder
from training.progress import ProgressBar, progress

log = logging.getLogger(__name__)


def embed_files(embedder: Embedder, paths: Sequence[str], *, batch_size: int = 64,
                num_workers: int = 2, bar: ProgressBar | None = None) -> np.ndarray:
    """Image files -> (n, d) float32 in the order given, with ``embedder``'s preprocessing.

    ``num_workers`` DataLoader processes decode and resize ahead of the model (prefetching a
    few batches each), so decoding overlaps the forward pass; ``bar`` is advanced per image."""
    return embedder.embed_paths(paths, batch_size=batch_size, num_workers=num_workers, bar=bar)


def embed_unique(embedder: Embedder, paths: Sequence[str], sha256s: Sequence[str], *,
                 batch_size: int = 64, num_workers: int = 2,
                 bar: ProgressBar | None = None) -> np.ndarray:
    """Like :func:`embed_files`, but identical content (same sha256) is embedded once."""
    if len(paths) != len(sha256s):
        raise ValueError(f"{len(paths)} paths but {len(sha256s)} hashes")
    if not paths:
        return np.zeros((0, embedder.dim), np.float32)
    _, first, inverse = np.unique(np.asarray(sha256s), return_index=True, return_inverse=True)
    if len(first) < len(paths):
        log.info("%d of %d images duplicate other images' content: embedding %d",
                 len(paths) - len(first), len(paths), len(first))
        if bar is not None:
            bar.update(len(paths) - len(first))
    vectors = embed_files(embedder, [paths[i] for i in first], batch_size=batch_size,
                          num_workers=num_workers, bar=bar)
    return vectors[inverse.ravel()]


def progress_bar(total: int, *, desc: str, enabled: bool, initial: int = 0) -> ProgressBar:
    """Progress in images with rate and ETA: a bar on a terminal, periodic log lines elsewhere
    (``training.progress``); silent when not ``enabled``."""
    return progress(total=total, initial=initial, unit="img", desc=desc, enabled=enabled,
                    smoothing=0.1, dynamic_ncols=True)
