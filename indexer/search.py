"""The one search path over an index version: unfiltered and filtered queries, tuned parameters,
tombstones, stored vectors.

Everything that searches an index goes through here: the service's micro-batched searches
(:func:`search_batch`), the indexer's tests and benchmarks (:func:`search_index`). A vector
store other than an in-process FAISS index would sit behind these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from indexer.factory import hnsw_of, ivf_of
from indexer.versions import IndexVersion

# Tombstoned entries carry id -1; every catalogue id is >= 0 (IDSelectorRange is [imin, imax)).
_LIVE_IDS = faiss.IDSelectorRange(0, np.iinfo(np.int64).max)

# A filter allowing at most this many ids is answered exactly from the stored vectors
# (a selective filter makes HNSW's graph walk miss hits; brute force over few vectors is cheap).
EXACT_FILTER_MAX = 4096


@dataclass(frozen=True)
class SearchJob:
    """One query: (d,) float32 vector, k, and optional filters on catalogue ids: only
    ``allowed`` ids (None: any), never ``excluded`` ones."""

    vector: np.ndarray
    k: int
    allowed: np.ndarray | None = None
    excluded: np.ndarray | None = None

    @property
    def filtered(self) -> bool:
        return self.allowed is not None or self.excluded is not None


@dataclass(frozen=True)
class SearchAnswer:
    """(k,) squared L2 distances and ids (-1: no hit), from ``version``."""

    distances: np.ndarray
    ids: np.ndarray
    version: str


def search_params(version: IndexVersion,
                  sel: faiss.IDSelector | None = None) -> faiss.SearchParameters | None:
    """Per-call parameters for a search restricted to ``sel`` (None: every id), skipping
    tombstones; None when a plain ``index.search`` will do. The tuned nprobe/efSearch are set on
    the index when it is loaded (:func:`indexer.versions.apply_search_params`) and are kept:
    FAISS's typed parameters would otherwise reset them to their defaults."""
    if version.manifest.tombstones:
        sel = _LIVE_IDS if sel is None else faiss.IDSelectorAnd(sel, _LIVE_IDS)
    if sel is None:
        return None
    hnsw = hnsw_of(version.index)
    if hnsw is not None:
        return faiss.SearchParametersHNSW(sel=sel, efSearch=hnsw.hnsw.efSearch)
    ivf = ivf_of(version.index)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe)
    return faiss.SearchParameters(sel=sel)


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


def search_batch(version: IndexVersion, jobs: list[SearchJob]) -> list[SearchAnswer]:
    """Answer ``jobs`` on one version: all unfiltered queries in one FAISS call, each filtered
    one on its own (filters differ per query)."""
    name = version.manifest.version
    out: list[SearchAnswer | None] = [None] * len(jobs)
    plain = [i for i, j in enumerate(jobs) if not j.filtered]
    if plain:  # one BLAS call for all unfiltered queries
        q = np.stack([jobs[i].vector for i in plain])
        d, ids = search_index(version, q, max(jobs[i].k for i in plain))
        for row, i in enumerate(plain):
            out[i] = SearchAnswer(d[row, :jobs[i].k], ids[row, :jobs[i].k], name)
    for i, j in enumerate(jobs):
        if j.filtered:
            d, ids = search_filtered(version, j)
            out[i] = SearchAnswer(d, ids, name)
    return out  # type: ignore[return-value]


def search_filtered(version: IndexVersion, job: SearchJob) -> tuple[np.ndarray, np.ndarray]:
    """One filtered query -> ((<= k,) squared distances, ids): exact over the stored vectors of
    a small allowed set, otherwise the index's own search restricted by an ``IDSelector``."""
    allowed = job.allowed
    if allowed is not None and job.excluded is not None:
        allowed = np.setdiff1d(allowed, job.excluded)
    if allowed is not None and len(allowed) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    if allowed is not None and len(allowed) <= EXACT_FILTER_MAX and stores_vectors(version.index):
        vecs, present = reconstruct(version.index, allowed)
        if present.any():  # (none: the index cannot reconstruct; use the selector)
            ids = allowed[present]
            d = ((vecs[present] - job.vector[None]) ** 2).sum(1).astype(np.float32)
            order = np.argsort(d, kind="stable")[:job.k]
            return d[order], ids[order]
    sel = (faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
           if allowed is not None else
           faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(job.excluded,
                                                                          np.int64))))
    k = max(1, min(job.k, version.index.ntotal or 1))
    d, ids = version.index.search(job.vector[None].astype(np.float32), k,
                                  params=search_params(version, sel))
    return d[0], ids[0]


def stores_vectors(index: faiss.Index) -> bool:
    """Whether ``reconstruct`` returns exact vectors (not compressed codes)."""
    ivf = ivf_of(index)
    return ivf is None or ivf.code_size >= 4 * ivf.d


def reconstruct(index: faiss.Index, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored vectors of catalogue ``ids`` -> ((m, d) float32, (m,) bool present)."""
    ids = np.asarray(ids, np.int64)
    present = np.zeros(len(ids), bool)
    out = np.zeros((len(ids), index.d), np.float32)
    for n, i in enumerate(ids):
        try:
            out[n] = index.reconstruct(int(i))
            present[n] = True
        except RuntimeError:  # catalogued but not in this version
            pass
    return out, present
