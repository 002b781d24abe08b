"""Build an index version from an image folder: catalogue rows, embeddings, tuned FAISS, manifest."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy.orm import Session

from indexer import construct
from indexer.catalog import (
    DEFAULT_COLLECTION,
    ModelRow,
    open_catalog,
    register_model,
    sha256_file,
    upsert_images,
)
from indexer.construct import AUTO, BuiltIndex, IndexingConfig, index_vectors
from indexer.embedding import drop_faceless, embed_unique, progress_bar
from indexer.factory import parse_factory
from indexer.incremental import lock_collection
from indexer.publish import ModelIdentity, built_manifest, publish_version
from indexer.versions import Manifest, publish_lock
from training.data.folders import Sample, list_image_folder
from training.models.embedder import Embedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    checkpoint: str
    images: str
    index_root: str
    catalog_url: str
    collection: str = DEFAULT_COLLECTION
    factory: str = AUTO  # a FAISS factory string, or "auto" (chosen by size and memory budget)
    batch_size: int = 64
    num_workers: int = 2
    keep_versions: int = 5
    progress: bool = True
    memory_budget_mb: float = 2048.0
    target_recall: float = 0.95  # recall@10 the search parameters are tuned to
    tuning_queries: int = 500
    seed: int = 0

    def indexing(self) -> IndexingConfig:
        return IndexingConfig(factory=self.factory, memory_budget_mb=self.memory_budget_mb,
                              target_recall=self.target_recall,
                              tuning_queries=self.tuning_queries, seed=self.seed,
                              progress=self.progress)


def image_key(root: Path, path: Path) -> str:
    """Catalogue key of an image: its path below the folder, without extension (``label/name``)."""
    return path.relative_to(root).with_suffix("").as_posix()


def make_index(factory: str, dim: int, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """An index over ``factory`` (L2 metric) holding ``vectors`` under catalogue ``ids``
    (IVF/PQ trained on a sample of them; see :func:`indexer.construct.make_index`)."""
    return construct.make_index(factory, dim, vectors, ids)


def model_row(session: Session, embedder: Embedder, checkpoint: str) -> ModelRow:
    """The catalogue's row for the embedder's checkpoint (created on first use)."""
    from training.checkpoint import load_checkpoint

    metrics = load_checkpoint(checkpoint).metrics
    return register_model(session, checkpoint_sha256=embedder.checkpoint_sha256,
                          name=embedder.spec.name, path=str(Path(checkpoint).resolve()),
                          spec=embedder.spec.to_dict(), metrics=_jsonable(metrics),
                          threshold=embedder.spec.threshold)


def _jsonable(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def manifest_for(built: BuiltIndex, embedder: Embedder, *, collection: str, requested: str,
                 cfg: IndexingConfig, seconds: float, version: str | None = None) -> Manifest:
    """The manifest of a freshly built index (see :func:`indexer.publish.built_manifest`)."""
    return built_manifest(built, ModelIdentity.of_embedder(embedder), collection=collection,
                          requested=requested, cfg=cfg, seconds=seconds, version=version)


def build_index(cfg: BuildConfig, *, samples: list[Sample] | None = None) -> Path:
    """Catalogue every image of the folder (or only ``samples`` from it), embed, publish."""
    t0 = time.perf_counter()
    root = Path(cfg.images)
    samples = samples if samples is not None else list_image_folder(root)
    icfg = cfg.indexing()
    embedder = Embedder.from_checkpoint(cfg.checkpoint)
    if icfg.factory != AUTO:
        parse_factory(icfg.factory, embedder.dim)  # fail before embedding, not after
    Session = open_catalog(cfg.catalog_url)
    rows = [{"key": image_key(root, Path(s.path)), "path": str(Path(s.path).resolve()),
             "label": s.label, "sha256": sha256_file(s.path)} for s in samples]
    with progress_bar(len(rows), desc="embed", enabled=cfg.progress) as bar:
        vectors = embed_unique(embedder, [s.path for s in samples], [r["sha256"] for r in rows],
                               batch_size=cfg.batch_size, num_workers=cfg.num_workers, bar=bar,
                               skip_faceless=True)
    with Session.begin() as session:  # catalogued first: a crash later leaves them for reindex
        images = upsert_images(session, rows, collection=cfg.collection)
        ids = np.array([im.id for im in images], np.int64)
    vectors, ids = drop_faceless(vectors, ids)  # a spec that requires a face: misses skipped
    built = index_vectors(vectors, ids, icfg)  # minutes for a large HNSW: holds no lock
    manifest = manifest_for(built, embedder, collection=cfg.collection, requested=cfg.factory,
                            cfg=icfg, seconds=time.perf_counter() - t0)
    # publish like every other writer of the root (reindex, the service's Upsert/Delete):
    # the root's lock, then the collection's (PostgreSQL replicas) inside the transaction
    with publish_lock(cfg.index_root), Session.begin() as session:
        lock_collection(session, cfg.collection)
        model = model_row(session, embedder, cfg.checkpoint)
        path = publish_version(cfg.index_root, built.index, manifest, session=session,
                               model_id=model.id, keep=cfg.keep_versions).path
    log.info("published %s: %d images, %s %s, recall@10 %.3f, %.1fs", path, manifest.count,
             manifest.factory, manifest.search_params, manifest.recall_at_10 or 0,
             manifest.build_seconds)
    return path

