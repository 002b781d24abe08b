"""The cluster job kind: a collection's embeddings clustered (training.clustering), NMI and purity
when labels are known, a CSV of every image's cluster and a gallery of the largest clusters."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from service.jobs.context import JobContext
from service.jobs.params import JobKind, param
from training.clustering import ClusterSample, cluster_embeddings, cluster_samples, nmi, purity


def cluster_gallery(samples: list[ClusterSample], paths: list[str], labels: list[str],
                    out: str, *, title: str) -> str:
    """Draw ``samples`` (see :func:`cluster_samples`) as one titled row per cluster -> PNG."""
    from training.visualization.embeddings import thumbnail
    from training.visualization.plots import cluster_gallery_figure, save_figure

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


def run_cluster(p: ClusterParams, ctx: JobContext) -> None:
    from service.jobs.kinds.visualization import embedding_source

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


# The kinds of this module; service.jobs.registry.load_builtin_kinds registers them.
KINDS = [
    JobKind("cluster", ClusterParams, run_cluster,
            "cluster a collection's embeddings; NMI/purity when labels are known; galleries"),
]
