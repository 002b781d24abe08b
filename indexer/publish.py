"""The one way an index version is published: manifest, version directory, CURRENT and its catalogue row.

Every writer of an index root goes through :func:`publish_version`: ``imgsim index build``,
``imgsim index rebuild``, ``imgsim reindex`` (one worker or merged shards), the service's Upsert
and Delete, and the repairs a server makes at start or after a failed change. Manifests come
from two builders: :func:`built_manifest` for a version built from vectors (build, rebuild,
reindex) and :func:`derived_manifest` for a version changed from another (Upsert, Delete,
republishing a parent). ``count`` is always the index's own ``ntotal``, set here.

Callers hold the root's :func:`indexer.versions.publish_lock` and, inside the catalogue
transaction ``session`` belongs to, :func:`indexer.incremental.lock_collection` from reading
what the publish derives from to the commit. The row is written in that transaction: if the
commit never happens (a crash at :data:`indexer.faults.AFTER_INDEX_PUBLISH`), CURRENT names a
version the catalogue does not list, which the next writer or a server's start repairs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.catalog import DEFAULT_COLLECTION, ModelRow, record_index_version
from indexer.versions import IndexVersion, Manifest, new_version_name, publish_index_version

if TYPE_CHECKING:
    from indexer.construct import BuiltIndex, IndexingConfig


@dataclass(frozen=True)
class ModelIdentity:
    """What a manifest says about the model whose vectors the index holds."""

    checkpoint_sha256: str
    model_version: str
    threshold: float | None
    dimension: int

    @classmethod
    def of_embedder(cls, embedder) -> ModelIdentity:
        return cls(embedder.checkpoint_sha256, embedder.model_version, embedder.spec.threshold,
                   embedder.dim)

    @classmethod
    def of_manifest(cls, m: Manifest) -> ModelIdentity:
        return cls(m.checkpoint_sha256, m.model_version, m.threshold, m.dimension)


def built_manifest(built: BuiltIndex, model: ModelIdentity, *, collection: str,
                   requested: str, cfg: IndexingConfig, seconds: float,
                   version: str | None = None, parent_version: str = "",
                   build_params: dict | None = None) -> Manifest:
    """The manifest of an index built from vectors: drift counters at zero, the tuning that
    chose it. ``build_params`` are kept beside what the build measured (reindex, rebuild)."""
    n = int(built.index.ntotal)
    return Manifest(
        version=version or new_version_name(), factory=built.factory, metric=cfg.metric,
        dimension=model.dimension, count=n, checkpoint_sha256=model.checkpoint_sha256,
        model_version=model.model_version, threshold=model.threshold, collection=collection,
        recall_at_10=round(float(built.recall), 4), search_params=dict(built.search_params),
        build_seconds=round(seconds, 3), parent_version=parent_version, count_at_build=n,
        requested_factory=requested, target_recall=cfg.target_recall,
        tuning_queries=min(cfg.tuning_queries, n),
        build_params={**(build_params or {}), "train_size": built.train_size,
                      "memory_budget_mb": cfg.memory_budget_mb, "met_target": built.met_target,
                      "candidates": built.candidates})


def derived_manifest(parent: Manifest, **changes) -> Manifest:
    """The manifest of a version changed from ``parent`` (drift counters and ``last_change``
    as given in ``changes``), under a new name."""
    return replace(parent, **{**changes, "version": new_version_name(), "created_at": "",
                              "parent_version": parent.version})


def model_id_of(session: Session, checkpoint_sha256: str) -> int | None:
    """The catalogue's id of a checkpoint, if it is registered."""
    return session.scalars(select(ModelRow.id).where(
        ModelRow.checkpoint_sha256 == checkpoint_sha256)).one_or_none()


def publish_version(root: str | Path, index: faiss.Index, manifest: Manifest, *,
                    session: Session | None = None, model_id: int | None = None,
                    keep: int = 5) -> IndexVersion:
    """Write ``index`` with ``manifest`` as a version (atomic), point CURRENT at it, prune to
    ``keep`` versions, and record it as the collection's published version in ``session``'s
    transaction (``model_id`` looked up by checkpoint when not given). Without a session
    (an index root without a catalogue) no row is written. Returns the version, ready to serve
    (the same ``index`` object)."""
    manifest = replace(manifest, count=int(index.ntotal),
                       created_at=manifest.created_at or datetime.now(UTC).isoformat())
    path = publish_index_version(root, index, manifest, keep=keep)
    if session is not None:
        if model_id is None:
            model_id = model_id_of(session, manifest.checkpoint_sha256)
        record_index_version(session, name=manifest.version,
                             collection=manifest.collection or DEFAULT_COLLECTION,
                             factory=manifest.factory, model_id=model_id,
                             params={"search": manifest.search_params, **manifest.build_params},
                             count=manifest.count, recall_at_10=manifest.recall_at_10,
                             path=str(path.resolve()), build_seconds=manifest.build_seconds)
    return IndexVersion(path, manifest, index)
