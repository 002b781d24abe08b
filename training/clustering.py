"""Clustering embeddings ("who is who" in an unlabelled album): FAISS k-means, scikit-learn
agglomerative or DBSCAN; NMI and purity against known labels; representative members per cluster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _l2n(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def kmeans(vectors: np.ndarray, *, n_clusters: int, seed: int = 0, **_kw) -> np.ndarray:
    """FAISS k-means (several restarts, the best kept) on L2-normalised vectors."""
    import faiss

    x = np.ascontiguousarray(_l2n(vectors), np.float32)
    km = faiss.Kmeans(x.shape[1], n_clusters, niter=50, nredo=5, seed=seed, verbose=False,
                      min_points_per_centroid=1)
    km.train(x)
    return km.index.search(x, 1)[1][:, 0].astype(np.int64)


def agglomerative(vectors: np.ndarray, *, n_clusters: int, linkage: str = "average",
                  **_kw) -> np.ndarray:
    """Agglomerative clustering with cosine distances (average linkage by default)."""
    from sklearn.cluster import AgglomerativeClustering

    metric = "euclidean" if linkage == "ward" else "cosine"
    return AgglomerativeClustering(n_clusters=n_clusters, linkage=linkage,
                                   metric=metric).fit_predict(vectors).astype(np.int64)


def dbscan(vectors: np.ndarray, *, eps: float = 0.5, min_samples: int = 3, **_kw) -> np.ndarray:
    """Density-based: no number of clusters needed; -1 marks noise (unclustered images).
    eps is a Euclidean distance between L2-normalised embeddings."""
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_samples).fit_predict(_l2n(vectors)).astype(np.int64)


CLUSTERERS: dict[str, Callable[..., np.ndarray]] = {
    "kmeans": kmeans,
    "agglomerative": agglomerative,
    "dbscan": dbscan,
}


def cluster_embeddings(vectors: np.ndarray, method: str, **kwargs) -> np.ndarray:
    """(n, d) -> (n,) cluster ids (-1 = noise, DBSCAN only)."""
    if method not in CLUSTERERS:
        raise ValueError(f"unknown clustering method {method!r}; "
                         f"valid: {', '.join(sorted(CLUSTERERS))}")
    n = len(vectors)
    k = kwargs.get("n_clusters")
    if method != "dbscan" and (k is None or not 1 <= k <= n):
        raise ValueError(f"n_clusters must be between 1 and the number of images ({n}), got {k}")
    return CLUSTERERS[method](vectors, **kwargs)


def purity(true: list[str] | np.ndarray, pred: np.ndarray) -> float:
    """Sum over clusters of the size of its most common true label, divided by n.
    Noise (-1) counts as singleton clusters."""
    true = np.asarray(true)
    pred = np.asarray(pred)
    total = int(np.sum(pred == -1))
    for c in np.unique(pred[pred != -1]):
        total += Counter(true[pred == c].tolist()).most_common(1)[0][1]
    return total / len(true)


def nmi(true: list[str] | np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(true), np.asarray(pred)))


@dataclass(frozen=True)
class ClusterSample:
    """What a gallery row shows of one cluster: its size, its majority label and the share of
    members carrying it, and which members to draw (indices into the collection)."""

    cluster: int
    size: int
    central: list[int]        # the members nearest the cluster's centre, nearest first
    random: list[int]         # a few more drawn at random from the rest
    majority: str | None = None   # None when the images carry no labels
    purity: float | None = None   # share of the members whose label is the majority

    @property
    def title(self) -> str:
        t = f"cluster {self.cluster}: {self.size} images"
        if self.majority is not None:
            t += f", {self.purity:.0%} '{self.majority}'"
        return t


def central_members(vectors: np.ndarray, members: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` of ``members`` (indices into ``vectors`` (N, d)) nearest their centre (the mean
    of their L2-normalised vectors, i.e. the k-means centroid), nearest first."""
    x = _l2n(vectors[members].astype(np.float64))
    d = np.linalg.norm(x - x.mean(0), axis=1)
    return members[np.argsort(d, kind="stable")[:n]]


def cluster_samples(vectors: np.ndarray, labels: list[str], pred: np.ndarray, *,
                    clusters: int, per_cluster: int, seed: int = 0) -> list[ClusterSample]:
    """The ``clusters`` largest clusters, largest first, each with a representative sample of
    ``per_cluster`` members: about 70% nearest the centre (what the cluster is), the rest at
    random (how far it strays). Labels of "" mean unknown: no majority or purity then."""
    rng = np.random.default_rng(seed)
    labelled = all(labels)
    n_random = per_cluster * 3 // 10
    out = []
    for c, size in Counter(pred[pred != -1].tolist()).most_common(clusters):
        members = np.flatnonzero(pred == c)
        central = central_members(vectors, members, per_cluster - n_random)
        rest = np.setdiff1d(members, central)
        random = rng.choice(rest, min(n_random, len(rest)), replace=False) if len(rest) else rest
        major = purity_ = None
        if labelled:
            major, count = Counter(labels[i] for i in members).most_common(1)[0]
            purity_ = count / size
        out.append(ClusterSample(int(c), int(size), central.tolist(),
                                 sorted(random.tolist()), major, purity_))
    return out
