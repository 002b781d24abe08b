"""Collections of embeddings (from an image folder; an index version's are read by the job kinds),
t-SNE maps of them, and image thumbnails for the figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.folders import list_image_folder
from training.models.embedder import Embedder


@dataclass(frozen=True)
class EmbeddingSet:
    vectors: np.ndarray     # (n, d) float32
    labels: list[str]       # "" where unknown
    paths: list[str]
    keys: list[str] | None = None   # catalogue keys (``label/name`` for a folder); None: unknown

    def __post_init__(self) -> None:
        if self.keys is None:
            object.__setattr__(self, "keys", [""] * len(self.paths))
        if not (len(self.vectors) == len(self.labels) == len(self.paths) == len(self.keys)):
            raise ValueError("vectors, labels, paths and keys must have the same length")

    def subset(self, idx: np.ndarray) -> EmbeddingSet:
        return EmbeddingSet(self.vectors[idx], [self.labels[i] for i in idx],
                            [self.paths[i] for i in idx], [self.keys[i] for i in idx])

    def sample(self, n: int, *, seed: int = 0) -> EmbeddingSet:
        """At most n items, chosen at random without replacement (order kept)."""
        if n <= 0 or n >= len(self.labels):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self.labels), n, replace=False))
        return self.subset(idx)


def from_folder(checkpoint: str, images: str, *, max_images: int = 0, seed: int = 0,
                progress: bool = False) -> EmbeddingSet:
    """Embed an image folder ``<images>/<label>/<file>`` (a random ``max_images`` of it)."""
    samples = list_image_folder(images)
    if 0 < max_images < len(samples):
        keep = np.sort(np.random.default_rng(seed).choice(len(samples), max_images,
                                                          replace=False))
        samples = [samples[i] for i in keep]
    emb = Embedder.from_checkpoint(checkpoint)
    vectors = emb.embed_paths([s.path for s in samples], progress=progress)
    # the key the indexer would catalogue the image under, so rows match `imgsim search` hits
    keys = [Path(s.path).relative_to(images).with_suffix("").as_posix() for s in samples]
    return EmbeddingSet(vectors, [s.label for s in samples], [s.path for s in samples], keys)


def write_points_csv(path: str | Path, data: EmbeddingSet, points: np.ndarray) -> Path:
    """One row per image: key, path, label and its (n, 2) map coordinates, so that a point
    can be traced back to its image."""
    import csv

    if len(points) != len(data.paths):
        raise ValueError(f"{len(points)} points for {len(data.paths)} images")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "path", "label", "x", "y"])
        for k, p, lab, (x, y) in zip(data.keys, data.paths, data.labels, points, strict=True):
            w.writerow([k, p, lab, f"{x:.6g}", f"{y:.6g}"])
    return Path(path)


def tsne_2d(vectors: np.ndarray, *, perplexity: float = 30.0, seed: int = 0,
            max_iter: int = 1000, threads: int | None = 1) -> np.ndarray:
    """(n, d) -> (n, 2) with scikit-learn's t-SNE (PCA init); perplexity is capped below n.

    ``threads`` caps its OpenMP threads (None: no cap): in a process that also runs torch,
    two OpenMP runtimes spin against each other and t-SNE of a few hundred points takes
    tens of seconds instead of one."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(vectors)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    perp = float(min(perplexity, (n - 1) / 3))
    with threadpool_limits(limits=threads):
        return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed,
                    learning_rate="auto", max_iter=max_iter
                    ).fit_transform(vectors.astype(np.float32))


def thumbnail(path: str | Path, size: int = 40) -> np.ndarray:
    """An image file -> (size, size, 3) or (size, size) float array in [0, 1]."""
    with Image.open(path) as im:
        im = im.convert("L" if im.mode in ("L", "1", "I;16") else "RGB")
        im.thumbnail((size, size))
        return np.asarray(im, dtype=np.float32) / 255.0


def knn_label_agreement(points: np.ndarray, labels: list[str], k: int = 5) -> float:
    """Fraction of each point's k nearest neighbours (in ``points``) that share its label:
    how well a 2-D map keeps the classes apart."""
    from sklearn.neighbors import NearestNeighbors

    lab = np.asarray(labels)
    nn = NearestNeighbors(n_neighbors=min(k + 1, len(points))).fit(points)
    _, idx = nn.kneighbors(points)
    return float(np.mean(lab[idx[:, 1:]] == lab[:, None]))
