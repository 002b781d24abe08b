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
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from indexer.construct import IndexingConfig, index_vectors
from indexer.versions import (
    IndexVersion,
    Manifest,
    current_version_name,
    new_version_name,
    publish_index_version,
    publish_lock,
)

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
                    keep: int = 5) -> Path:
    """Rebuild ``version`` from its stored vectors (``auto`` re-chooses the factory unless
    ``cfg`` names one), re-tune, publish as a new version with the drift counters reset."""
    t0 = time.perf_counter()
    m = version.manifest
    cfg = cfg or IndexingConfig(target_recall=m.target_recall or 0.95, metric=m.metric)
    vectors, ids = stored_vectors(version.index)
    built = index_vectors(vectors, ids, cfg)
    manifest = replace(
        m, version=new_version_name(), created_at="", factory=built.factory,
        count=int(built.index.ntotal), recall_at_10=round(float(built.recall), 4),
        search_params=dict(built.search_params), build_seconds=round(time.perf_counter() - t0, 3),
        parent_version=m.version, count_at_build=int(built.index.ntotal), added_since_build=0,
        removed_since_build=0, tombstones=0, requested_factory=cfg.factory,
        target_recall=cfg.target_recall,
        build_params={**m.build_params, "rebuilt_from": m.version, "train_size": built.train_size,
                      "candidates": built.candidates, "met_target": built.met_target})
    with publish_lock(root):  # Upsert/Delete may have published meanwhile: never undo them
        now = current_version_name(root)
        if now != m.version:
            raise IndexChanged(f"the index changed while it was rebuilt ({m.version} -> {now}); "
                               "nothing was published: run the rebuild again")
        path = publish_index_version(root, built.index, Manifest.from_dict(manifest.__dict__),
                                     keep=keep)
    log.info("rebuilt %s as %s: %d vectors, %s %s, recall@10 %.3f", m.version, path.name,
             manifest.count, manifest.factory, manifest.search_params, manifest.recall_at_10)
    return path
