"""Measured recall@k against exact search, search-parameter tuning to a target recall, and q/s."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np

from indexer.factory import IndexKind
from indexer.versions import apply_search_params

log = logging.getLogger(__name__)

# Values tried, in order, for each tuning parameter (the search stops at the first that meets
# the target, then bisects down between it and the previous one).
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
EF_SEARCHES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)


@dataclass(frozen=True)
class HeldOut:
    """Queries the index does not hold, with their exact neighbours among what it holds:
    (nq, d) float32 and (nq, k) int64 ids (-1 where fewer than k exist)."""

    queries: np.ndarray
    truth: np.ndarray
    k: int


def exact_neighbours(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, *,
                     metric: int = faiss.METRIC_L2, batch: int = 4096) -> np.ndarray:
    """(nq, k) ids of the exact nearest neighbours of each query among ``vectors``."""
    flat = faiss.IndexFlat(vectors.shape[1], metric)
    flat.add(np.ascontiguousarray(vectors, np.float32))
    out = np.empty((len(queries), k), np.int64)
    for i in range(0, len(queries), batch):
        _, nn = flat.search(np.ascontiguousarray(queries[i:i + batch], np.float32), k)
        out[i:i + batch] = np.where(nn >= 0, ids[np.maximum(nn, 0)], -1)
    return out


def held_out_queries(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, *, k: int,
                     metric: int = faiss.METRIC_L2) -> HeldOut:
    """Queries from outside the indexed ``vectors``, scored against exact search over them."""
    truth = exact_neighbours(vectors, ids, queries, min(k, len(vectors)), metric=metric)
    if truth.shape[1] < k:
        truth = np.pad(truth, ((0, 0), (0, k - truth.shape[1])), constant_values=-1)
    return HeldOut(np.ascontiguousarray(queries, np.float32), truth, k)


def recall_per_query(index: faiss.Index, held: HeldOut, *,
                     params: dict | None = None) -> np.ndarray:
    """(nq,) fraction of each query's exact k nearest neighbours found in the index's top k."""
    if params:
        apply_search_params(index, params)
    _, found = index.search(held.queries, held.k)
    out = np.ones(len(found))
    for i, (f, t) in enumerate(zip(found, held.truth, strict=True)):
        t = t[t >= 0]
        if len(t):
            out[i] = len(np.intersect1d(f[f >= 0], t)) / len(t)
    return out


def recall_at_k(index: faiss.Index, held: HeldOut, *, params: dict | None = None) -> float:
    """Mean fraction of each query's exact k nearest neighbours found in the index's top k."""
    return float(recall_per_query(index, held, params=params).mean())


def lower_bound(per_query: np.ndarray, z: float = 1.96) -> float:
    """Lower end of the ~95% confidence interval of the mean recall: tuning asks this to reach
    the target, so that the recall holds for queries beyond the tuning sample, not just on it."""
    if len(per_query) < 2:
        return float(per_query.mean()) if len(per_query) else 1.0
    return float(per_query.mean() - z * per_query.std(ddof=1) / np.sqrt(len(per_query)))


@contextmanager
def faiss_threads(n: int | None):
    """Temporarily run FAISS with ``n`` OpenMP threads (None: leave as is)."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def queries_per_second(index: faiss.Index, queries: np.ndarray, *, k: int = 10,
                       batch: int = 1, seconds: float = 0.3, repeats: int = 3,
                       threads: int | None = None) -> float:
    """Throughput of ``index.search`` with ``batch`` queries per call: the best of ``repeats``
    windows of ``seconds`` each (the minimum time is the usual estimator on a shared machine,
    where other work only ever adds time).

    Single queries are best timed with ``threads=1``: a server runs one query per request
    thread, and an OpenMP team of 2 on a busy 2-core machine waits for its second thread."""
    queries = np.ascontiguousarray(queries, np.float32)
    if len(queries) < batch:
        queries = np.tile(queries, (batch // max(len(queries), 1) + 1, 1))
    calls = [queries[i:i + batch] for i in range(0, len(queries) - batch + 1, batch)]
    with faiss_threads(threads):
        index.search(calls[0], k)  # warm caches
        best = 0.0
        i = 0
        for _ in range(repeats):
            done, t0, elapsed = 0, time.perf_counter(), 0.0
            while elapsed < seconds:
                index.search(calls[i], k)
                i = (i + 1) % len(calls)
                done += batch
                elapsed = time.perf_counter() - t0
            best = max(best, done / elapsed)
    return best


def queries_per_second_alternating(indexes: list[faiss.Index], queries: np.ndarray, *,
                                   k: int = 10, rounds: int = 5, seconds: float = 0.2,
                                   threads: int | None = 1) -> list[float]:
    """Single-query throughput of several indexes timed in alternating windows, the best
    window of each: on a shared machine a burst of other work then slows them alike, rather
    than whichever happened to be timed during it."""
    best = [0.0] * len(indexes)
    for _ in range(rounds):
        for i, index in enumerate(indexes):
            best[i] = max(best[i], queries_per_second(index, queries, k=k, batch=1,
                                                      seconds=seconds, repeats=1,
                                                      threads=threads))
    return best


@dataclass(frozen=True)
class Tuned:
    params: dict
    recall: float
    met_target: bool


def _candidates(kind: IndexKind) -> list[int]:
    if kind.family == "ivf":
        return [p for p in NPROBES if p < kind.nlist] + [kind.nlist]
    return list(EF_SEARCHES)


QUANTIZER_EF_SEARCHES = (16, 32, 64, 128)  # tried for an HNSW coarse quantiser


def search_setting(kind: IndexKind, value: int, quantizer_ef: int | None = None) -> dict:
    """The search parameters for one value of the tuned knob. An HNSW coarse quantiser must
    find the ``nprobe`` nearest centroids, so its own efSearch is at least ``nprobe`` (at its
    default of 16, recall@10 stalled near 0.95 whatever nprobe, on 1M clustered vectors)."""
    if kind.tuning_param is None:
        return {}
    params = {kind.tuning_param: value}
    if kind.coarse_hnsw:
        params["quantizer_efSearch"] = max(quantizer_ef or 64, value)
    return params


def search_cost(kind: IndexKind, params: dict, ntotal: int) -> float:
    """Distance computations per query, to compare settings that all reach the target: the
    coarse HNSW visits about efSearch x 2M neighbours, IVF scans nprobe average lists."""
    if kind.family != "ivf":
        return float(params.get("efSearch", 0))
    scan = params["nprobe"] * ntotal / max(kind.nlist, 1)
    coarse = params.get("quantizer_efSearch", 0) * 64 if kind.coarse_hnsw else kind.nlist
    return scan + coarse


def tune_search_params(index: faiss.Index, kind: IndexKind, held: HeldOut, *,
                       target_recall: float) -> Tuned:
    """The cheapest nprobe (IVF) / efSearch (HNSW) whose recall@k reaches the target with
    confidence (the lower bound of its ~95% interval over the held-out queries, see
    :func:`lower_bound`); the most accurate tried value when none does. Exact indexes need none.
    With an HNSW coarse quantiser, nprobe is tuned for each of its efSearch values and the
    setting with the fewest distance computations (:func:`search_cost`) wins.
    ``Tuned.recall`` is the mean recall measured at the chosen setting."""
    if kind.tuning_param is None:
        return Tuned({}, recall_at_k(index, held), True)
    if not kind.coarse_hnsw:
        tuned = _tune_one(index, kind, held, target_recall, None)
    else:
        tries = [_tune_one(index, kind, held, target_recall, ef) for ef in QUANTIZER_EF_SEARCHES]
        met = [t for t in tries if t.met_target]
        tuned = min(met, key=lambda t: search_cost(kind, t.params, index.ntotal)) if met else \
            max(tries, key=lambda t: t.recall)
    apply_search_params(index, tuned.params)
    if not tuned.met_target:
        log.warning("target recall@%d %.3f not reached: best %s gives %.4f", held.k,
                    target_recall, tuned.params, tuned.recall)
    return tuned


def _tune_one(index: faiss.Index, kind: IndexKind, held: HeldOut, target_recall: float,
              quantizer_ef: int | None) -> Tuned:
    name = kind.tuning_param
    values = _candidates(kind)
    if name == "efSearch":
        values = [v for v in values if v >= held.k] or [held.k]
    per_query: dict[int, np.ndarray] = {}

    def setting(v: int) -> dict:
        return search_setting(kind, v, quantizer_ef)

    def reaches(v: int) -> bool:
        if v not in per_query:
            per_query[v] = recall_per_query(index, held, params=setting(v))
            log.debug("%s: recall@%d %.4f (lower bound %.4f)", setting(v), held.k,
                      per_query[v].mean(), lower_bound(per_query[v]))
        return lower_bound(per_query[v]) >= target_recall

    lo = None  # largest value known to miss the target
    for v in values:
        if reaches(v):
            hi = v
            lo_v = lo if lo is not None else 0
            while hi - lo_v > 1 and (hi - lo_v) / hi > 0.1:  # bisect to within 10%
                mid = (lo_v + hi) // 2
                if mid <= 0:
                    break
                if reaches(mid):
                    hi = mid
                else:
                    lo_v = mid
            return Tuned(setting(hi), float(per_query[hi].mean()), True)
        lo = v
    best = max(per_query, key=lambda v: (per_query[v].mean(), -v))
    return Tuned(setting(best), float(per_query[best].mean()), False)
