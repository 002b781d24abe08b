"""Build an index version from an image folder: catalogue rows, embeddings, FAISS, manifest."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from indexer.catalog import DEFAULT_COLLECTION, open_catalog, sha256_file, upsert_images
from indexer.versions import Manifest, new_version_name, publish_index_version
from training.data import Sample, list_image_folder
from training.embedder import Embedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    checkpoint: str
    images: str
    index_root: str
    catalog_url: str
    collection: str = DEFAULT_COLLECTION
    factory: str = "Flat"
    batch_size: int = 64
    num_workers: int = 2
    keep_versions: int = 5
    progress: bool = True


def image_key(root: Path, path: Path) -> str:
    """Catalogue key of an image: its path below the folder, without extension (``label/name``)."""
    return path.relative_to(root).with_suffix("").as_posix()


def make_index(factory: str, dim: int, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """An IndexIDMap2 over ``factory`` (L2 metric) holding ``vectors`` under catalogue ``ids``."""
    if factory != "Flat":
        raise ValueError(f"unsupported factory {factory!r} (this build supports: Flat)")
    index = faiss.IndexIDMap2(faiss.index_factory(dim, factory, faiss.METRIC_L2))
    index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
    return index


def build_index(cfg: BuildConfig, *, samples: list[Sample] | None = None) -> Path:
    """Catalogue every image of the folder (or only ``samples`` from it), embed, publish."""
    t0 = time.perf_counter()
    root = Path(cfg.images)
    samples = samples if samples is not None else list_image_folder(root)
    embedder = Embedder.from_checkpoint(cfg.checkpoint)
    Session = open_catalog(cfg.catalog_url)
    rows = [{"key": image_key(root, Path(s.path)), "path": str(Path(s.path).resolve()),
             "label": s.label, "sha256": sha256_file(s.path)} for s in samples]
    vectors = embedder.embed_paths([s.path for s in samples], batch_size=cfg.batch_size,
                                   num_workers=cfg.num_workers, progress=cfg.progress)
    with Session.begin() as session:
        images = upsert_images(session, rows, collection=cfg.collection)
        ids = np.array([im.id for im in images], np.int64)
        index = make_index(cfg.factory, embedder.dim, vectors, ids)
        manifest = Manifest(
            version=new_version_name(), factory=cfg.factory, metric="l2",
            dimension=embedder.dim, count=int(index.ntotal),
            checkpoint_sha256=embedder.checkpoint_sha256, model_version=embedder.model_version,
            threshold=embedder.spec.threshold, collection=cfg.collection, recall_at_10=1.0,
            build_seconds=time.perf_counter() - t0)
        # publish inside the transaction: if publishing fails, the rows roll back too
        path = publish_index_version(cfg.index_root, index, manifest, keep=cfg.keep_versions)
    log.info("published %s: %d images in %.1fs", path, manifest.count, manifest.build_seconds)
    return path
