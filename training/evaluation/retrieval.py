"""Retrieval on unseen classes: Recall@K, P@1, MAP@R and NMI, every query against all the others."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import faiss
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from training.data.folders import Sample

log = logging.getLogger(__name__)

RECALL_KS = (1, 2, 4, 8)


def exact_neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    """(n, d) -> (n, k) indices of each row's k nearest other rows (exact L2, FAISS flat).

    The query itself is removed by index, not by position, so that duplicates of a query
    (distance 0) are not dropped in its place.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n = len(emb)
    if k >= n:
        raise ValueError(f"k={k} neighbours need more than {n} items")
    index = faiss.IndexFlatL2(emb.shape[1])
    index.add(emb)
    _, idx = index.search(emb, k + 1)
    is_self = idx == np.arange(n)[:, None]
    # rows where the query was not returned (ties) drop their last neighbour instead
    is_self[~is_self.any(1), -1] = True
    return idx[~is_self].reshape(n, k)


def average_precision_at_r(relevant: np.ndarray, r: np.ndarray) -> np.ndarray:
    """MAP@R per query (Musgrave et al., "A Metric Learning Reality Check").

    relevant: (n, k) bool, whether the i-th neighbour shares the query's class, k >= max(r);
    r: (n,) the number of other items of the query's class. Returns (n,):
    (1/R) * sum_{i<=R} precision@i * relevant_i.
    """
    relevant = np.asarray(relevant, bool)
    r = np.asarray(r, int)
    pos = np.arange(1, relevant.shape[1] + 1)
    within = pos[None, :] <= r[:, None]
    hits = relevant & within
    precision = np.cumsum(hits, axis=1) / pos[None, :]
    return (precision * hits).sum(1) / np.maximum(r, 1)


def retrieval_metrics(emb: np.ndarray, labels: Sequence, *, ks: Sequence[int] = RECALL_KS,
                      nmi: bool = True, seed: int = 0) -> dict[str, float]:
    """Metrics of (n, d) embeddings with (n,) labels, every item querying all the others.

    Recall@K: a same-class item among the K nearest. P@1 equals Recall@1. MAP@R and
    R-precision over the queries whose class has another member. NMI: k-means with one
    cluster per class against the labels.
    """
    labels = np.asarray(labels)
    _, y = np.unique(labels, return_inverse=True)
    counts = np.bincount(y)
    r = counts[y] - 1
    k = int(max(max(ks), r.max()))
    k = min(k, len(y) - 1)
    nn = exact_neighbours(emb, k)
    relevant = y[nn] == y[:, None]
    out: dict[str, float] = {f"recall@{q}": float(relevant[:, :q].any(1).mean()) for q in ks}
    out["precision@1"] = float(relevant[:, 0].mean())
    has = r > 0
    out["map@r"] = float(average_precision_at_r(relevant[has], r[has]).mean())
    r_hits = (relevant & (np.arange(1, k + 1)[None, :] <= r[:, None])).sum(1)
    out["r_precision"] = float((r_hits[has] / r[has]).mean())
    if nmi:
        km = KMeans(n_clusters=len(counts), n_init=1, random_state=seed)
        pred = km.fit_predict(np.asarray(emb, np.float64))
        out["nmi"] = float(normalized_mutual_info_score(y, pred))
    out["n_queries"] = int(len(y))
    out["n_classes"] = int(len(counts))
    return out


def evaluate_retrieval(embedder, samples: Sequence[Sample], *, batch_size: int = 64,
                       num_workers: int = 2, nmi: bool = True) -> dict[str, float]:
    """Embed ``samples`` with a training.models.embedder.Embedder and compute ``retrieval_metrics``."""
    emb = embedder.embed_paths([s.path for s in samples], batch_size=batch_size,
                               num_workers=num_workers, progress=True)
    return retrieval_metrics(emb, [s.label for s in samples], nmi=nmi)
