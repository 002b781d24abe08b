"""Incremental changes to a loaded index version: add, replace and remove images consistently.

The catalogue and the FAISS index must agree: every vector's FAISS id is its image's catalogue
primary key (``IndexIDMap2`` for Flat/HNSW, ids stored natively in IVF inverted lists). These functions change both, the catalogue through the caller's
session (the caller owns the transaction) and the index **in place**, so call them inside
``with Session.begin() as s:``: if the index change raises, the transaction rolls back.

API (what the service's Upsert/Delete use)::

    with sessions.begin() as s:
        ids = add_to_index(s, version, rows, vectors, collection="c")  # (n, d) float32
        n = remove_from_index(s, version, ["key1", "key2"], collection="c")
    path = publish_changes(index_root, version, keep=5)  # persist as a new published version
    if needs_rebuild(version.manifest): ...  # drift: schedule `imgsim index build`/`reindex`

- ``rows`` are dicts for :func:`indexer.catalog.upsert_images` (``key``, ``path``, ``label``,
  ``sha256``, ...). A key already in the collection keeps its id; its old vector is replaced.
- Removal uses FAISS ``remove_ids`` where the index supports it (Flat, IVF). HNSW cannot remove:
  the entry is tombstoned (its id slot set to -1, counted in ``manifest.tombstones``) and
  :func:`indexer.search.search_index` filters tombstones with an ``IDSelector``, so results still
  hold ``k`` live hits; a plain ``index.search`` may return -1 labels for them, never a removed id.
- FAISS indexes are not safe to search while they are being modified. Either serialise writers
  against searchers (a lock), or change a copy (:func:`clone_version`) and swap it in.
- :func:`publish_changes` writes the changed index as a new version (atomic, like any publish),
  recording ``parent_version`` and the drift counters in its manifest.
- Other processes publish into the same root (``imgsim reindex``, other servers): hold
  :func:`indexer.versions.publish_lock` (this host) and, inside the transaction,
  :func:`lock_collection` (hosts sharing a PostgreSQL catalogue) from reading CURRENT and the
  catalogue to the publish, or a concurrent version is overwritten and its changes lost.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from indexer.catalog import DEFAULT_COLLECTION, ImageRow, upsert_images
from indexer.factory import hnsw_of, ivf_of
from indexer.publish import derived_manifest, publish_version
from indexer.versions import IndexVersion, Manifest, apply_search_params, retry_until

log = logging.getLogger(__name__)

# Rebuild (re-train IVF centroids, re-tune search parameters, drop tombstones) once changes since
# the last full build exceed this fraction of its size.
DEFAULT_MAX_DRIFT = 0.2


def _writable_index(version: IndexVersion) -> faiss.Index:
    index = version.index
    if not isinstance(index, faiss.IndexIDMap2) and ivf_of(index) is None:
        raise TypeError(f"index version {version.manifest.version} is a {type(index).__name__}: "
                        "neither an IndexIDMap2 nor an IVF index, so it has no catalogue ids")
    return index


def _remove_ids(index: faiss.Index, ids: np.ndarray) -> tuple[int, int]:
    """Remove ``ids`` from the index; returns (removed, tombstoned)."""
    ids = np.asarray(ids, np.int64)
    if len(ids) == 0 or index.ntotal == 0:
        return 0, 0
    if hnsw_of(index) is None:
        return int(index.remove_ids(ids)), 0
    # HNSW cannot remove: tombstone the slots (id -1), which searches skip with an IDSelector
    id_map = faiss.vector_to_array(index.id_map)
    hit = np.isin(id_map, ids)
    if not hit.any():
        return 0, 0
    id_map[hit] = -1
    faiss.copy_array_to_vector(id_map, index.id_map)
    index.construct_rev_map()
    return 0, int(hit.sum())


def _changed(m: Manifest, *, added: int = 0, removed: int = 0, tombstoned: int = 0) -> Manifest:
    """Drift counters after a change (``count`` is the index's own, set when it is published)."""
    return replace(m, added_since_build=m.added_since_build + added,
                   removed_since_build=m.removed_since_build + removed + tombstoned,
                   tombstones=m.tombstones + tombstoned,
                   count_at_build=m.count_at_build or m.count)


def change_vectors(index: faiss.Index, *, remove: Sequence[int] = (), ids: Sequence[int] = (),
                   vectors: np.ndarray | None = None) -> tuple[int, int]:
    """Remove the ``remove`` ids, then add ``vectors`` (n, d) float32 under ``ids``, in place,
    without touching the catalogue (it already holds these rows: a reindex catching up with
    it). Returns (removed, tombstoned); record tombstones in the manifest."""
    removed, tombstoned = _remove_ids(index, np.asarray(list(remove), np.int64))
    ids = np.asarray(list(ids), np.int64)
    if len(ids):
        vectors = np.ascontiguousarray(vectors, np.float32)
        if vectors.shape != (len(ids), index.d):
            raise ValueError(f"vectors must be ({len(ids)}, {index.d}), got {vectors.shape}")
        index.add_with_ids(vectors, ids)
    return removed, tombstoned


def _advisory_key(collection: str) -> int:
    digest = hashlib.sha256(f"imgsim.publish:{collection}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_collection(session: Session, collection: str, *, timeout: float | None = None,
                    poll: float = 0.05) -> None:
    """Hold ``collection``'s publish lock across hosts until the session's transaction ends.

    On PostgreSQL: a transaction-level advisory lock (``pg_advisory_xact_lock`` on a hash of
    the collection name), released by the commit or rollback; ``TimeoutError`` after
    ``timeout`` seconds. On other databases nothing is needed: an SQLite catalogue is one
    host's file, where :func:`indexer.versions.publish_lock` already serialises writers.
    Take it after ``publish_lock`` and before reading what the publish derives from."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = _advisory_key(collection)
    if timeout is None:
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        return
    retry_until(lambda: bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                             {"k": key}).scalar()),
                timeout=timeout, poll=poll,
                what=f"another writer has held collection {collection!r}'s publish lock for "
                     f"over {timeout:.0f}s")


def add_to_index(session: Session, version: IndexVersion, rows: Sequence[dict],
                 vectors: np.ndarray, *, collection: str = DEFAULT_COLLECTION) -> list[int]:
    """Upsert ``rows`` into the catalogue and their ``vectors`` (n, d) float32 into the index.

    Returns the catalogue ids (= FAISS ids) in input order. Keys already catalogued keep their
    id and get the new vector (the old one is removed first)."""
    index = _writable_index(version)
    vectors = np.ascontiguousarray(vectors, np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != version.manifest.dimension:
        raise ValueError(f"vectors must be (n, {version.manifest.dimension}), got {vectors.shape}")
    if len(rows) != len(vectors):
        raise ValueError(f"{len(rows)} rows but {len(vectors)} vectors")
    keys = [r["key"] for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys in one add_to_index call")
    if version.manifest.collection and collection != version.manifest.collection:
        raise ValueError(f"index version {version.manifest.version} serves collection "
                         f"{version.manifest.collection!r}, not {collection!r}")
    if not rows:
        return []
    images = upsert_images(session, rows, collection=collection)
    ids = np.array([im.id for im in images], np.int64)
    removed, tombstoned = _remove_ids(index, ids)
    index.add_with_ids(vectors, ids)
    version.manifest = _changed(version.manifest, added=len(ids), removed=removed,
                                tombstoned=tombstoned)
    log.debug("added %d vectors to %s (%d replaced)", len(ids), version.manifest.version,
              removed + tombstoned)
    return [int(i) for i in ids]


def remove_from_index(session: Session, version: IndexVersion, keys: Sequence[str], *,
                      collection: str = DEFAULT_COLLECTION) -> int:
    """Delete the images with these keys from the catalogue and their vectors from the index.

    Unknown keys are ignored; returns how many catalogued images were removed."""
    index = _writable_index(version)
    keys = list(dict.fromkeys(keys))
    if not keys:
        return 0
    ids = np.array(list(session.scalars(select(ImageRow.id).where(
        ImageRow.collection == collection, ImageRow.key.in_(keys)))), np.int64)
    if len(ids) == 0:
        return 0
    removed, tombstoned = _remove_ids(index, ids)
    session.execute(delete(ImageRow).where(ImageRow.id.in_([int(i) for i in ids])))
    version.manifest = _changed(version.manifest, removed=removed, tombstoned=tombstoned)
    return len(ids)


def clone_version(version: IndexVersion) -> IndexVersion:
    """A deep copy whose index can be changed while the original keeps serving searches."""
    index = faiss.clone_index(version.index)
    if isinstance(index, faiss.IndexIDMap2):
        index.construct_rev_map()
    apply_search_params(index, version.manifest.search_params)
    return IndexVersion(version.path, version.manifest, index)


def publish_changes(root: str | Path, version: IndexVersion, *, keep: int = 5,
                    session: Session | None = None) -> Path:
    """Publish the (changed) index as a new version derived from the one it was cloned from
    (recorded in ``session``'s transaction, if given); ``version`` then refers to it."""
    published = publish_version(root, version.index, derived_manifest(version.manifest),
                                session=session, keep=keep)
    version.path, version.manifest = published.path, published.manifest
    return published.path


def drift(manifest: Manifest) -> float:
    """Changes since the last full build, as a fraction of that build's size."""
    base = manifest.count_at_build or manifest.count
    changes = manifest.added_since_build + manifest.removed_since_build
    return changes / base if base else float(changes > 0)


def needs_rebuild(manifest: Manifest, *, max_drift: float = DEFAULT_MAX_DRIFT) -> bool:
    """Whether a full rebuild is warranted: drift beyond ``max_drift``, or tombstones making up
    more than ``max_drift`` of the stored entries (they cost search time and memory)."""
    if manifest.count and manifest.tombstones / manifest.count > max_drift:
        return True
    return drift(manifest) > max_drift
