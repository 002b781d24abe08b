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
    """Queries with their exact neighbours, (nq, d) float32 and (nq, k) int64 ids.

    ``exclude`` is each query's own id when queries are taken from the indexed set
    (leave-one-out), or -1; results equal to it are dropped before scoring."""

    queries: np.ndarray
    truth: np.ndarray
    exclude: np.ndarray
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


def held_out_from_collection(vectors: np.ndarray, ids: np.ndarray, *, nq: int, k: int,
                             rng: np.random.Generator, metric: int = faiss.METRIC_L2) -> HeldOut:
    """Leave-one-out queries: ``nq`` indexed vectors whose own entry is excluded from both the
    exact neighbours and the index's answers, so each behaves like an unseen query."""
    nq = min(nq, len(vectors))
    pick = rng.choice(len(vectors), nq, replace=False) if nq < len(vectors) else np.arange(nq)
    q = np.ascontiguousarray(vectors[pick], np.float32)
    own = ids[pick].astype(np.int64)
    kk = min(k + 1, len(vectors))
    truth = _drop_own(exact_neighbours(vectors, ids, q, kk, metric=metric), own, k)
    return HeldOut(q, truth, own, k)


def held_out_queries(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, *, k: int,
                     metric: int = faiss.METRIC_L2) -> HeldOut:
    """Queries from outside the indexed set (what the benchmarks use)."""
    truth = exact_neighbours(vectors, ids, queries, k, metric=metric)
    return HeldOut(np.ascontiguousarray(queries, np.float32), truth,
                   np.full(len(queries), -1, np.int64), k)


def _drop_own(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's own id and keep the first k (rows are sorted by distance)."""
    out = np.full((len(found), k), -1, np.int64)
    for i, row in enumerate(found):
        row = row[row != own[i]]
        out[i, :min(k, len(row))] = row[:k]
    return out


def recall_at_k(index: faiss.Index, held: HeldOut, *, params: dict | None = None) -> float:
    """Mean fraction of each query's exact k nearest neighbours found in the index's top k."""
    if params:
        apply_search_params(index, params)
    extra = int((held.exclude >= 0).any())
    _, found = index.search(held.queries, held.k + extra)
    found = _drop_own(found, held.exclude, held.k) if extra else found[:, :held.k]
    hits = 0
    valid = 0
    for f, t in zip(found, held.truth, strict=True):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        valid += len(t)
    return hits / valid if valid else 1.0


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


@dataclass(frozen=True)
class Tuned:
    params: dict
    recall: float
    met_target: bool


def _candidates(kind: IndexKind) -> list[int]:
    if kind.family == "ivf":
        return [p for p in NPROBES if p < kind.nlist] + [kind.nlist]
    return list(EF_SEARCHES)


def tune_search_params(index: faiss.Index, kind: IndexKind, held: HeldOut, *,
                       target_recall: float) -> Tuned:
    """The cheapest nprobe (IVF) / efSearch (HNSW) whose measured recall@k reaches the target;
    the most accurate tried value (and its recall) when none does. Exact indexes need none."""
    name = kind.tuning_param
    if name is None:
        return Tuned({}, recall_at_k(index, held), True)
    values = _candidates(kind)
    if name == "efSearch":
        values = [v for v in values if v >= held.k] or [held.k]
    recalls: dict[int, float] = {}

    def measure(v: int) -> float:
        if v not in recalls:
            recalls[v] = recall_at_k(index, held, params={name: v})
            log.debug("%s=%d: recall@%d %.4f", name, v, held.k, recalls[v])
        return recalls[v]

    lo = None  # largest value known to miss the target
    for v in values:
        if measure(v) >= target_recall:
            hi = v
            lo_v = lo if lo is not None else 0
            while hi - lo_v > 1 and (hi - lo_v) / hi > 0.1:  # bisect to within 10%
                mid = (lo_v + hi) // 2
                if mid <= 0:
                    break
                if measure(mid) >= target_recall:
                    hi = mid
                else:
                    lo_v = mid
            apply_search_params(index, {name: hi})
            return Tuned({name: hi}, recalls[hi], True)
        lo = v
    best = max(recalls, key=lambda v: (recalls[v], -v))
    apply_search_params(index, {name: best})
    log.warning("target recall@%d %.3f not reached: best %s=%d gives %.4f", held.k,
                target_recall, name, best, recalls[best])
    return Tuned({name: best}, recalls[best], False)
