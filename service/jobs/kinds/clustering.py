"""Clustering a collection's embeddings ("who is who" in an unlabelled album): FAISS k-means,
scikit-learn agglomerative or DBSCAN; NMI and purity when labels are known; galleries."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.jobs.context import JobContext
from service.jobs.registry import param, register_job


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


def cluster_gallery(samples: list[ClusterSample], paths: list[str], labels: list[str],
                    out: str, *, title: str) -> str:
    """Draw ``samples`` (see :func:`cluster_samples`) as one titled row per cluster -> PNG."""
    from service.jobs.visualization.embeddings import thumbnail
    from service.jobs.visualization.plots import cluster_gallery_figure, save_figure

    rows = []
    for cs in samples:
        drawn = [(i, False) for i in cs.central] + [(i, True) for i in cs.random]
        rows.append((cs.title, [(thumbnail(paths[i], 64), labels[i][:16] or "?",
                                 None if cs.majority is None else labels[i] == cs.majority, r)
                                for i, r in drawn]))
    return str(save_figure(cluster_gallery_figure(rows, title=title), out))


@dataclass(frozen=True)
class ClusterParams:
    checkpoint: str = param("", "embedding model for 'images' (default: the worker's --checkpoint)")
    images: str = param("", "image folder <label>/<file> to embed; empty: the index below")
    index_root: str = param("", "index whose stored vectors are clustered (default: the worker's)")
    catalog_url: str = param(
        "", "catalogue of that index, for keys, paths and labels (default: the worker's)")
    method: str = param("kmeans", "kmeans | agglomerative | dbscan")
    n_clusters: int = param(
        0, "clusters for kmeans/agglomerative (0: the number of distinct labels)")
    linkage: str = param(
        "average", "agglomerative linkage: average | complete | single (cosine) or ward")
    eps: float = param(
        0.5, "dbscan neighbourhood radius (Euclidean, between L2-normalised embeddings)")
    min_samples: int = param(3, "dbscan: neighbours a core point needs")
    max_images: int = param(2000, "cluster a random sample of at most this many images")
    gallery_clusters: int = param(12, "largest clusters drawn in the gallery")
    gallery_per_cluster: int = param(
        10, "images drawn per cluster (nearest the centre, then random)")
    seed: int = param(0, "seed of the sample, the clustering and the gallery's random picks")


@register_job("cluster", ClusterParams,
              "cluster a collection's embeddings; NMI/purity when labels are known; galleries")
def run_cluster(p: ClusterParams, ctx: JobContext) -> None:
    from service.jobs.visualization.jobs import embedding_source

    data = embedding_source(ctx, checkpoint=p.checkpoint, images=p.images,
                            index_root=p.index_root, catalog_url=p.catalog_url,
                            max_images=p.max_images, seed=p.seed)
    labelled = all(data.labels)
    k = p.n_clusters or (len(set(data.labels)) if labelled else 0)
    if p.method != "dbscan" and k <= 0:
        raise ValueError("n_clusters is needed when the images carry no labels")
    ctx.progress(0.3, f"clustering {len(data.labels)} embeddings with {p.method}")
    pred = cluster_embeddings(data.vectors, p.method, n_clusters=k, linkage=p.linkage,
                              eps=p.eps, min_samples=p.min_samples, seed=p.seed)
    sizes = Counter(pred[pred != -1].tolist())
    summary = {"method": p.method, "images": len(pred), "clusters": len(sizes),
               "noise": int(np.sum(pred == -1))}
    if labelled:
        summary |= {"labels": len(set(data.labels)), "nmi": nmi(data.labels, pred),
                    "purity": purity(data.labels, pred)}
    ctx.report.table([summary], "clustering summary (NMI and purity against the known labels)")
    out = ctx.path("clusters.csv")
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "path", "label", "cluster"])
        w.writerows(zip(data.keys, data.paths, data.labels, pred.tolist(), strict=True))
    ctx.add_artifact(out, "cluster of every image")
    (ctx.path("summary.json")).write_text(json.dumps(summary, indent=2))
    ctx.add_artifact(ctx.path("summary.json"), "summary")
    ctx.progress(0.7, "drawing cluster galleries")
    samples = cluster_samples(data.vectors, data.labels, pred, clusters=p.gallery_clusters,
                              per_cluster=p.gallery_per_cluster, seed=p.seed)
    if samples:
        ctx.add_artifact(cluster_gallery(samples, data.paths, data.labels,
                                         str(ctx.path("clusters.png")),
                                         title=f"{p.method}: the {len(samples)} largest "
                                               "clusters"),
                         "largest clusters: the members nearest each centre, then a few at "
                         "random (frame: green = the cluster's majority label)")
