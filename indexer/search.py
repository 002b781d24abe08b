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

    Distances are what the index's metric returns (squared L2 for ``metric == "l2"``)."""
    queries = np.ascontiguousarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != version.index.d:
        raise ValueError(f"queries must be (n, {version.index.d}), got {queries.shape}")
    k = max(1, min(int(k), max(int(version.index.ntotal), 1)))
    params = search_params(version)
    if params is None:
        return version.index.search(queries, k)
    return version.index.search(queries, k, params=params)
