"""From vectors to a tuned FAISS index: train on a sample, add, tune to a target recall; ``auto``.

``auto`` works like autofaiss (choose by collection size and a memory budget: exact search for
small collections, IVF or HNSW above, compressed codes when memory demands it) but then
*measures*: every candidate that fits is built, tuned to the target recall@k on held-out
queries, and timed (in alternating windows, all candidates held in memory meanwhile); the
fastest single-query candidate that reaches the target wins.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from indexer.factory import METRICS, estimate_bytes, new_index, parse_factory
from indexer.tune import (
    HeldOut,
    held_out_queries,
    queries_per_second_alternating,
    tune_search_params,
)
from training.progress import progress as progress_bar

log = logging.getLogger(__name__)

AUTO = "auto"
HNSW_COARSE_FROM = 2048  # IVF lists from which the coarse quantiser is an HNSW graph


@dataclass(frozen=True)
class IndexingConfig:
    """How to turn vectors into a searchable index."""

    factory: str = AUTO
    metric: str = "l2"
    memory_budget_mb: float = 2048.0  # what the index may occupy (auto respects it)
    target_recall: float = 0.95  # recall@k that search parameters are tuned to
    k: int = 10
    tuning_queries: int = 500  # held-out queries for recall and speed measurements
    train_points_per_list: int = 64  # IVF/PQ are trained on a sample of this many per list
    flat_below: int = 4_000  # auto: under this many vectors exact search is cheap: Flat only
    flat_max: int = 100_000  # auto: Flat stays a (timed) candidate up to this size
    hnsw_max: int = 300_000  # auto: HNSW build time grows fast; above this IVF only
    # auto: IVF lists = factor * sqrt(n), rounded to a power of 2 (few lists suit well-separated
    # clusters, more lists suit diffuse data: auto times both)
    nlist_factors: tuple[float, ...] = (1.0, 4.0, 8.0)
    seed: int = 0
    progress: bool = False


@dataclass
class BuiltIndex:
    index: faiss.Index
    factory: str
    search_params: dict
    recall: float  # measured recall@k on held-out queries (1.0 for exact search)
    met_target: bool
    build_seconds: float
    train_size: int = 0
    qps_single: float | None = None  # measured while choosing (auto)
    candidates: list[dict] = field(default_factory=list)  # what auto tried, for the manifest


def _pow2(x: float) -> int:
    return 1 << max(0, round(math.log2(max(x, 1))))


def auto_candidates(n: int, dim: int, cfg: IndexingConfig) -> list[str]:
    """The factory strings ``auto`` considers for ``n`` vectors of ``dim`` within the budget."""
    budget = cfg.memory_budget_mb * 2**20
    if n < cfg.flat_below:
        return ["Flat"]
    fits = lambda f: estimate_bytes(parse_factory(f, dim), dim, n) <= budget  # noqa: E731
    out = []
    if n <= cfg.flat_max and fits("Flat"):
        out.append("Flat")
    nlists = sorted({min(_pow2(c * math.sqrt(n)), max(1, n // 39)) for c in cfg.nlist_factors})
    for nlist in nlists:
        # with many lists the exact coarse search dominates a query: use an HNSW over centroids
        coarse = f"IVF{nlist}_HNSW32" if nlist >= HNSW_COARSE_FROM else f"IVF{nlist}"
        for codes in _codes_by_size(dim):
            f = f"{coarse},{codes}"
            if fits(f):
                out.append(f)
                break
    if n <= cfg.hnsw_max and fits("HNSW32"):
        out.append("HNSW32")
    if not out:
        raise ValueError(f"no index of {n} x {dim} vectors fits a memory budget of "
                         f"{cfg.memory_budget_mb:g} MB (smallest: IVF,PQ{_smallest_pq(dim)})")
    return out


def _codes_by_size(dim: int) -> list[str]:
    """Vector codes from exact to most compressed: Flat, SQ8, then PQ with fewer sub-quantisers."""
    pq = [m for m in (dim // 2, dim // 4, dim // 8, dim // 16) if m >= 1 and dim % m == 0
          and m <= 64]
    return ["Flat", "SQ8", *[f"PQ{m}" for m in dict.fromkeys(pq)]]


def _smallest_pq(dim: int) -> int:
    return [int(c[2:]) for c in _codes_by_size(dim) if c.startswith("PQ")][-1]


def make_index(factory: str, dim: int, vectors: np.ndarray, ids: np.ndarray, *,
               metric: str = "l2", train_points_per_list: int = 64, seed: int = 0,
               progress: bool = False) -> faiss.Index:
    """An index over ``factory`` holding ``vectors`` (n, d) float32 under catalogue ``ids``.

    IVF/PQ are trained on a random sample (``train_points_per_list`` per list, at least what
    PQ's 256-centroid codebooks need)."""
    kind = parse_factory(factory, dim)
    vectors = np.ascontiguousarray(vectors, np.float32)
    ids = np.ascontiguousarray(ids, np.int64)
    if vectors.shape != (len(ids), dim):
        raise ValueError(f"vectors must be ({len(ids)}, {dim}), got {vectors.shape}")
    index = new_index(factory, dim, metric=metric)
    if kind.trained:
        if len(vectors) < kind.nlist:
            raise ValueError(f"{factory} needs at least {kind.nlist} vectors to train, "
                             f"got {len(vectors)}")
        n_train = min(len(vectors), max(train_points_per_list * kind.nlist, 10_000))
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))] \
            if n_train < len(vectors) else vectors
        t0 = time.perf_counter()
        index.train(sample)
        log.info("trained %s on %d vectors in %.1fs", factory, n_train, time.perf_counter() - t0)
    step = 65_536
    with progress_bar(total=len(vectors), unit="vec", desc=f"add {factory}", enabled=progress,
                      leave=False) as bar:
        for i in range(0, len(vectors), step):
            index.add_with_ids(vectors[i:i + step], ids[i:i + step])
            bar.update(min(step, len(vectors) - i))
    return index


def build_tuned(factory: str, vectors: np.ndarray, ids: np.ndarray, held: HeldOut,
                cfg: IndexingConfig) -> BuiltIndex:
    """Build ``factory`` and tune its search parameters to ``cfg.target_recall``."""
    t0 = time.perf_counter()
    dim = vectors.shape[1]
    kind = parse_factory(factory, dim)
    index = make_index(factory, dim, vectors, ids, metric=cfg.metric,
                       train_points_per_list=cfg.train_points_per_list, seed=cfg.seed,
                       progress=cfg.progress)
    tuned = tune_search_params(index, kind, held, target_recall=cfg.target_recall)
    n_train = min(len(vectors), max(cfg.train_points_per_list * kind.nlist, 10_000)) \
        if kind.trained else 0
    return BuiltIndex(index, factory, tuned.params, tuned.recall, tuned.met_target,
                      time.perf_counter() - t0, train_size=n_train)


def split_for_tuning(n: int, nq: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(base rows, held-out query rows): ``nq`` random rows (at most a tenth) are kept out of
    the index while it is tuned. Queries that are in the index would flatter it: HNSW reaches
    a stored vector's neighbours through its own links (measured on LFW+CUB embeddings:
    recall 0.96 leave-one-out, 0.86 on unseen images, at the same efSearch)."""
    nq = min(nq, max(1, n // 10)) if n > 1 else 0
    held = np.sort(rng.choice(n, nq, replace=False)) if nq else np.zeros(0, np.int64)
    base = np.setdiff1d(np.arange(n), held, assume_unique=True)
    return base, held


def index_vectors(vectors: np.ndarray, ids: np.ndarray, cfg: IndexingConfig) -> BuiltIndex:
    """Vectors (n, d) float32 under catalogue ids (n,) -> a tuned index (``auto`` chooses one).

    Candidates are built without a held-out sample of the vectors, tuned and timed on it as
    unseen queries; the sample is added to the chosen index afterwards."""
    if cfg.metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {cfg.metric!r}")
    if not 0 < cfg.target_recall <= 1:
        raise ValueError(f"target recall must be in (0, 1], got {cfg.target_recall}")
    vectors = np.ascontiguousarray(vectors, np.float32)
    ids = np.ascontiguousarray(ids, np.int64)
    n, dim = vectors.shape
    if cfg.factory != AUTO:
        parse_factory(cfg.factory, dim)  # a clear error before any work
    t0 = time.perf_counter()
    if n == 0:
        factory = "Flat" if cfg.factory == AUTO else cfg.factory
        index = new_index(factory, dim, metric=cfg.metric)
        return BuiltIndex(index, factory, {}, 1.0, True, 0.0)
    candidates = [cfg.factory] if cfg.factory != AUTO else auto_candidates(n, dim, cfg)
    if candidates == ["Flat"]:  # exact: nothing to tune or choose
        index = make_index("Flat", dim, vectors, ids, metric=cfg.metric)
        return BuiltIndex(index, "Flat", {}, 1.0, True, time.perf_counter() - t0)
    base, q = split_for_tuning(n, cfg.tuning_queries, np.random.default_rng(cfg.seed))
    held = held_out_queries(vectors[base], ids[base], vectors[q], k=cfg.k,
                            metric=METRICS[cfg.metric])
    results = [build_tuned(f, vectors[base], ids[base], held, cfg) for f in candidates]
    if len(results) > 1:  # timed in alternation, so that noise cannot pick the winner
        speeds = queries_per_second_alternating([b.index for b in results], held.queries,
                                                k=cfg.k)
        for b, qps in zip(results, speeds, strict=True):
            b.qps_single = qps
            log.info("auto candidate %s %s: recall@%d %.4f, %.0f q/s single", b.factory,
                     b.search_params, cfg.k, b.recall, qps)
    met = [b for b in results if b.met_target]
    best = max(met, key=lambda b: b.qps_single or 0) if met else \
        max(results, key=lambda b: b.recall)
    if len(candidates) > 1:
        best.candidates = [{"factory": b.factory, "search_params": b.search_params,
                            "recall": round(b.recall, 4), "qps_single": round(b.qps_single, 1),
                            "build_seconds": round(b.build_seconds, 2)} for b in results]
        log.info("auto chose %s %s", best.factory, best.search_params)
    best.index.add_with_ids(vectors[q], ids[q])  # the held-out vectors belong in the index
    best.build_seconds = time.perf_counter() - t0
    return best
