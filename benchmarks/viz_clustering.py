"""Benchmark: clustering a labelled image collection by its embeddings ("who is who"):
FAISS k-means vs agglomerative vs DBSCAN, scored by NMI and purity against the true labels.

    .venv/bin/python benchmarks/viz_clustering.py --checkpoint var/dlib.pt \\
        --images $IMGSIM_DATA/lfw/lfw-deepfunneled --min-per-class 20 --per-class 20

Prints a markdown table and writes a gallery of the largest clusters per method.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from service.jobs.kinds.clustering import cluster_gallery
from training.clustering import cluster_embeddings, cluster_samples, nmi, purity
from training.data.folders import list_image_folder
from training.models.embedder import Embedder
from training.visualization.embeddings import EmbeddingSet


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="folder <label>/<image>")
    p.add_argument("--min-per-class", type=int, default=20, help="keep labels with this many")
    p.add_argument("--per-class", type=int, default=20, help="images used per label")
    p.add_argument("--max-classes", type=int, default=0, help="0: all eligible labels")
    p.add_argument("--eps", default="0.4,0.5,0.6", help="DBSCAN eps values to try")
    p.add_argument("--out", default="runs/viz-clustering")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = list_image_folder(args.images)
    by: dict[str, list] = {}
    for s in samples:
        by.setdefault(s.label, []).append(s)
    labels = sorted(c for c, v in by.items() if len(v) >= args.min_per_class)
    if args.max_classes:
        labels = labels[:args.max_classes]
    chosen = [s for c in labels for s in by[c][:args.per_class]]
    t0 = time.perf_counter()
    emb = Embedder.from_checkpoint(args.checkpoint)
    vectors = emb.embed_paths([s.path for s in chosen], progress=True)
    embed_s = time.perf_counter() - t0
    data = EmbeddingSet(vectors, [s.label for s in chosen], [s.path for s in chosen])
    k = len(labels)
    runs = [("kmeans", {"n_clusters": k, "seed": args.seed}),
            ("agglomerative", {"n_clusters": k, "linkage": "average"}),
            ("agglomerative", {"n_clusters": k, "linkage": "ward"})]
    runs += [("dbscan", {"eps": float(e), "min_samples": 3}) for e in args.eps.split(",")]
    rows = []
    for method, kw in runs:
        t = time.perf_counter()
        pred = cluster_embeddings(data.vectors, method, **kw)
        secs = time.perf_counter() - t
        sizes = Counter(pred[pred != -1].tolist())
        name = method + "".join(f" {k_}={v}" for k_, v in kw.items() if k_ not in
                                ("n_clusters", "seed", "min_samples"))
        rows.append({"method": name, "clusters": len(sizes), "noise": int(np.sum(pred == -1)),
                     "nmi": nmi(data.labels, pred), "purity": purity(data.labels, pred),
                     "seconds": secs})
        cluster_gallery(cluster_samples(data.vectors, data.labels, pred, clusters=6,
                                        per_cluster=8, seed=args.seed),
                        data.paths, data.labels,
                        str(out / f"{name.replace(' ', '_').replace('=', '')}.png"),
                        title=f"{name}: largest clusters")
    print(f"\n{len(chosen)} images of {k} labels from {args.images}; model "
          f"{emb.model_version}; embedding took {embed_s:.0f}s\n")
    print("| method | clusters | noise | NMI | purity | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['clusters']} | {r['noise']} | {r['nmi']:.4f} "
              f"| {r['purity']:.4f} | {r['seconds']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
