"""Full rebuild of an index version from its own stored vectors, when incremental drift warrants it.

After many incremental changes an IVF's centroids describe yesterday's data, its tuned
``nprobe`` no longer gives the recall in the manifest, and an HNSW carries tombstones. Where the
index stores vectors exactly (Flat, HNSW, IVF-Flat) they are read back and the index is rebuilt,
re-trained and re-tuned without re-embedding; compressed codes (PQ, SQ) are lossy, so those
collections are rebuilt with `imgsim reindex` (same checkpoint) instead.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import DEFAULT_COLLECTION
from indexer.construct import IndexingConfig, index_vectors
from indexer.incremental import lock_collection
from indexer.publish import ModelIdentity, built_manifest, publish_version
from indexer.versions import IndexVersion, current_version_name, publish_lock

log = logging.getLogger(__name__)


class IndexChanged(RuntimeError):
    """Another writer published a version while this one was being built from the old one."""


def stored_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, d) float32, ids (n,) int64) of the live entries of an exact-storage index."""
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        ids = faiss.vector_to_array(index.id_map)
        vectors = index.index.reconstruct_n(0, index.ntotal)
        live = ids >= 0  # tombstones carry -1
        return np.ascontiguousarray(vectors[live]), ids[live]
    if not isinstance(index, faiss.IndexIVF):  # e.g. OPQ: codes live in a rotated space
        raise ValueError(f"cannot read vectors back from a {type(index).__name__}; rebuild "
                         "with `imgsim reindex` (same checkpoint)")
    ivf = faiss.downcast_index(index)
    if not isinstance(ivf, faiss.IndexIVFFlat):
        raise ValueError(f"{type(ivf).__name__} stores compressed codes: its vectors cannot be "
                         "read back exactly; rebuild with `imgsim reindex` (same checkpoint)")
    lists = ivf.invlists
    vecs, ids = [], []
    for i in range(ivf.nlist):
        n = lists.list_size(i)
        if n:
            ids.append(faiss.rev_swig_ptr(lists.get_ids(i), n).copy())
            codes = faiss.rev_swig_ptr(lists.get_codes(i), n * lists.code_size).copy()
            vecs.append(codes.view(np.float32).reshape(n, ivf.d))
    if not ids:
        return np.zeros((0, ivf.d), np.float32), np.zeros(0, np.int64)
    return np.concatenate(vecs), np.concatenate(ids)


def rebuild_version(root: str | Path, version: IndexVersion, *, cfg: IndexingConfig | None = None,
                    keep: int = 5, sessions: sessionmaker[Session] | None = None) -> Path:
    """Rebuild ``version`` from its stored vectors (``auto`` re-chooses the factory unless
    ``cfg`` names one), re-tune, publish as a new version with the drift counters reset, and
    record it in the catalogue ``sessions`` opens (none: the root has no catalogue to tell)."""
    t0 = time.perf_counter()
    m = version.manifest
    cfg = cfg or IndexingConfig(target_recall=m.target_recall or 0.95, metric=m.metric)
    vectors, ids = stored_vectors(version.index)
    built = index_vectors(vectors, ids, cfg)
    manifest = built_manifest(built, ModelIdentity.of_manifest(m), collection=m.collection,
                              requested=cfg.factory, cfg=cfg,
                              seconds=time.perf_counter() - t0, parent_version=m.version,
                              build_params={**m.build_params, "rebuilt_from": m.version})
    collection = m.collection or DEFAULT_COLLECTION
    with publish_lock(root), ExitStack() as stack:  # Upsert/Delete may have published meanwhile
        session = stack.enter_context(sessions.begin()) if sessions is not None else None
        if session is not None:
            lock_collection(session, collection)
        now = current_version_name(root)
        if now != m.version:  # never undo them
            raise IndexChanged(f"the index changed while it was rebuilt ({m.version} -> {now}); "
                               "nothing was published: run the rebuild again")
        path = publish_version(root, built.index, manifest, session=session, keep=keep).path
    log.info("rebuilt %s as %s: %d vectors, %s %s, recall@10 %.3f", m.version, path.name,
             manifest.count, manifest.factory, manifest.search_params, manifest.recall_at_10)
    return path
