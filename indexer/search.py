"""The search path over an index version: tuned parameters, tombstone filtering, nothing else."""

from __future__ import annotations

import faiss
import numpy as np

from indexer.factory import hnsw_of
from indexer.versions import IndexVersion

# Tombstoned entries carry id -1; every catalogue id is >= 0 (IDSelectorRange is [imin, imax)).
_LIVE_IDS = faiss.IDSelectorRange(0, np.iinfo(np.int64).max)


def search_params(version: IndexVersion) -> faiss.SearchParameters | None:
    """Per-call parameters: only needed to skip tombstones (the tuned nprobe/efSearch are set on
    the index when it is loaded, see :func:`indexer.versions.apply_search_params`)."""
    if not version.manifest.tombstones:
        return None
    hnsw = hnsw_of(version.index)
    if hnsw is not None:
        return faiss.SearchParametersHNSW(sel=_LIVE_IDS, efSearch=hnsw.hnsw.efSearch)
    return faiss.SearchParameters(sel=_LIVE_IDS)


def search_index(version: IndexVersion, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 queries -> (distances, ids), each (n, k); missing results are id -1.

    Distances are what the index's metric returns (squared L2 for ``metric == "l2"``). The hot
    path adds one attribute check to ``index.search``: validation happens only on failure."""
    index = version.index
    try:
        if not version.manifest.tombstones:
            return index.search(queries, k)
        return index.search(queries, k, params=search_params(version))
    except (AssertionError, ValueError) as e:  # FAISS's wrapper asserts; say what was wrong
        shape = getattr(queries, "shape", None)
        if shape is None or len(shape) != 2 or shape[1] != index.d:
            raise ValueError(f"queries must be (n, {index.d}), got {shape}") from e
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}") from e
        raise
