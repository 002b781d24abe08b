"""Embedding many image files for indexing: DataLoader workers decode while the model runs."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from training.models.embedder import Embedder
from training.progress import ProgressBar, progress

log = logging.getLogger(__name__)


def embed_files(embedder: Embedder, paths: Sequence[str], *, batch_size: int = 64,
                num_workers: int = 2, bar: ProgressBar | None = None,
                skip_faceless: bool = False) -> np.ndarray:
    """Image files -> (n, d) float32 in the order given, with ``embedder``'s preprocessing.

    ``num_workers`` DataLoader processes decode and resize ahead of the model (prefetching a
    few batches each), so decoding overlaps the forward pass; ``bar`` is advanced per image.
    ``skip_faceless``: an image without a face, when the model's spec requires one, gets a NaN
    row (logged; :func:`drop_faceless` removes them) instead of raising FaceNotFoundError."""
    return embedder.embed_paths(paths, batch_size=batch_size, num_workers=num_workers, bar=bar,
                                missing=[] if skip_faceless else None)


def embed_unique(embedder: Embedder, paths: Sequence[str], sha256s: Sequence[str], *,
                 batch_size: int = 64, num_workers: int = 2,
                 bar: ProgressBar | None = None, skip_faceless: bool = False) -> np.ndarray:
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
                          num_workers=num_workers, bar=bar, skip_faceless=skip_faceless)
    return vectors[inverse.ravel()]


def drop_faceless(vectors: np.ndarray, ids: np.ndarray, *, what: str = "index"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ids) without the NaN rows of images that had no face (``skip_faceless``):
    they stay in the catalogue, not in the index; how many is logged."""
    keep = ~np.isnan(vectors).any(axis=1) if len(vectors) else np.ones(0, bool)
    if keep.all():
        return vectors, ids
    log.warning("%d of %d images have no face and are left out of the %s (the model's spec "
                "requires a face; they stay in the catalogue)", int((~keep).sum()), len(keep),
                what)
    return vectors[keep], ids[keep]


def progress_bar(total: int, *, desc: str, enabled: bool, initial: int = 0) -> ProgressBar:
    """Progress in images with rate and ETA: a bar on a terminal, periodic log lines elsewhere
    (``training.progress``); silent when not ``enabled``."""
    return progress(total=total, initial=initial, unit="img", desc=desc, enabled=enabled,
                    smoothing=0.1, dynamic_ncols=True)
