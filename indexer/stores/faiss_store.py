"""The embedded vector store: today's FAISS index versions (manifest, tuned recall, CURRENT) in
process memory, searched through :mod:`indexer.search` and published through
:mod:`indexer.publish`."""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from faiss import swig_ptr
from sqlalchemy import and_, select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import ImageRow
from indexer.construct import IndexingConfig, index_vectors
from indexer.factory import stored_ids
from indexer.incremental import change_vectors, publish_changes
from indexer.publish import ModelIdentity, built_manifest, publish_version
from indexer.search import SearchJob, search_batch, search_index
from indexer.stores.base import (
    NO_FILTER,
    Items,
    StoreDescription,
    StoreHits,
    StoreQuery,
    top_k_within,
)
from indexer.versions import IndexVersion, load_index_version

_F32 = np.dtype(np.float32)
_UNIT_STRIDE = (4,)  # a contiguous (d,) float32 row


def catalogue_ids(session: Session, *, collection: str, labels: Sequence[str] = (),
                  metadata: Mapping[str, str] | None = None) -> np.ndarray:
    """Catalogue ids of ``collection``'s images with one of ``labels`` (if any) and every
    metadata pair (JSON string equality, SQLite and PostgreSQL alike)."""
    conditions = [ImageRow.collection == collection]
    if labels:
        conditions.append(ImageRow.label.in_(list(labels)))
    conditions += [ImageRow.meta[k].as_string() == v for k, v in (metadata or {}).items()]
    return np.array(list(session.scalars(select(ImageRow.id).where(and_(*conditions)))),
                    np.int64)


class FaissStore:
    """FAISS index versions, one index root per collection (``roots``), or ``index_root`` for
    every collection (today's layout: one collection per root) unless ``per_collection``
    puts each under ``<index_root>/<collection>``.

    Label and metadata filters become allowed-id sets: from the catalogue (``sessions``), else
    from the labels and metadata this process published or added. ``add``/``remove`` change the
    loaded version in place (under a lock: FAISS is not safe to search while changed);
    :meth:`flush` persists them as a derived version."""

    backend = "faiss"

    def __init__(self, index_root: str | Path = "var/index", *,
                 roots: Mapping[str, str | Path] | None = None, per_collection: bool = False,
                 sessions: sessionmaker[Session] | None = None,
                 config: IndexingConfig | None = None, keep_versions: int = 5) -> None:
        self.index_root, self.roots = Path(index_root), dict(roots or {})
        self.per_collection, self.sessions = per_collection, sessions
        self.config = config or IndexingConfig()
        self.keep_versions = keep_versions
        self._versions: dict[str, IndexVersion] = {}
        self._attributes: dict[str, dict[int, tuple[str, dict]]] = {}
        self._by_label: dict[str, dict[str, np.ndarray]] = {}  # from _attributes, lazily
        self._dirty: set[str] = set()
        self._lock = threading.RLock()

    def root_of(self, collection: str) -> Path:
        if collection in self.roots:
            return Path(self.roots[collection])
        return self.index_root / collection if self.per_collection else self.index_root

    def version(self, collection: str) -> IndexVersion:
        """The serving version (loaded from CURRENT on first use)."""
        v = self._versions.get(collection)
        if v is None:
            with self._lock:
                v = self._versions.get(collection)
                if v is None:
                    v = self._versions[collection] = load_index_version(self.root_of(collection))
        return v

    def publish(self, collection: str, items: Items, *, model: ModelIdentity | None = None,
                session: Session | None = None, keep: int | None = None) -> StoreDescription:
        t0 = time.perf_counter()
        built = index_vectors(items.vectors, items.ids, self.config)
        model = model or ModelIdentity("", "", None, items.vectors.shape[1])
        manifest = built_manifest(built, model, collection=collection,
                                  requested=self.config.factory, cfg=self.config,
                                  seconds=time.perf_counter() - t0)
        version = publish_version(self.root_of(collection), built.index, manifest,
                                  session=session, keep=keep or self.keep_versions)
        with self._lock:
            self._versions[collection] = version
            self._attributes[collection] = self._table(items)
            self._by_label.pop(collection, None)
            self._dirty.discard(collection)
        return self.describe(collection)

    @staticmethod
    def _table(items: Items) -> dict[int, tuple[str, dict]]:
        return {int(i): (lab, dict(m)) for i, lab, m in
                zip(items.ids, items.labels, items.metadata, strict=True)}

    def add(self, collection: str, items: Items) -> None:
        with self._lock:
            v = self.version(collection)
            _, tombstoned = change_vectors(v.index, remove=items.ids, ids=items.ids,
                                           vectors=items.vectors)
            self._after_change(collection, v, tombstoned)
            self._attributes.setdefault(collection, {}).update(self._table(items))
            self._by_label.pop(collection, None)

    def remove(self, collection: str, ids: Sequence[int]) -> int:
        ids = np.asarray(list(ids), np.int64)
        with self._lock:
            v = self.version(collection)
            before = set(stored_ids(v.index).tolist())
            _, tombstoned = change_vectors(v.index, remove=ids)
            self._after_change(collection, v, tombstoned)
            table = self._attributes.get(collection, {})
            for i in ids:
                table.pop(int(i), None)
            self._by_label.pop(collection, None)
        return len(before.intersection(ids.tolist()))

    def _after_change(self, collection: str, v: IndexVersion, tombstoned: int) -> None:
        from dataclasses import replace

        if tombstoned:
            v.manifest = replace(v.manifest, tombstones=v.manifest.tombstones + tombstoned)
        self._dirty.add(collection)

    def flush(self, collection: str, *, session: Session | None = None) -> None:
        """Persist in-place changes as a new version derived from the serving one."""
        with self._lock:
            if collection in self._dirty:
                publish_changes(self.root_of(collection), self.version(collection),
                                keep=self.keep_versions, session=session)
                self._dirty.discard(collection)

    def _allowed(self, collection: str, labels: Sequence[str],
                 metadata: Mapping[str, str]) -> np.ndarray:
        if self.sessions is not None:
            with self.sessions() as s:
                return catalogue_ids(s, collection=collection, labels=labels, metadata=metadata)
        table = self._attributes.get(collection)
        if table is None:
            raise ValueError(f"collection {collection!r}: label/metadata filters need the "
                             f"catalogue (FaissStore(sessions=...))")
        if labels:
            by_label = self._by_label.get(collection)
            if by_label is None:
                groups: dict[str, list[int]] = {}
                for i, (lab, _) in table.items():
                    groups.setdefault(lab, []).append(i)
                by_label = self._by_label[collection] = {
                    lab: np.array(v, np.int64) for lab, v in groups.items()}
            empty = np.zeros(0, np.int64)
            ids = np.concatenate([by_label.get(lab, empty) for lab in labels])
        else:
            ids = np.fromiter(table, np.int64, len(table))
        if metadata:
            ids = np.array([i for i in ids.tolist() if all(
                k in table[i][1] and str(table[i][1][k]) == v for k, v in metadata.items())],
                np.int64)
        return ids

    def search(self, collection: str, queries: Sequence[StoreQuery]) -> list[StoreHits]:
        if len(queries) == 1 and queries[0].where is NO_FILTER:  # the hottest path
            q = queries[0]
            vec, k = q.vector, q.k
            with self._lock:
                v = self._versions.get(collection) or self.version(collection)
                if (vec.dtype is _F32 and vec.strides == _UNIT_STRIDE and type(k) is int
                        and k > 0 and vec.shape[0] == v.manifest.dimension
                        and not v.manifest.tombstones):
                    # FAISS's C++ search through its SWIG entry, as FAISS's own Python wrapper
                    # calls it, with the checks that make it safe done above (one contiguous
                    # float32 row of the index's dimension, k >= 1), in a third of the
                    # wrapper's time: this is where the backend earns back its own overhead
                    d, ids = np.empty(k, _F32), np.empty(k, np.int64)
                    v.index.search_c(1, swig_ptr(vec), k, swig_ptr(d), swig_ptr(ids))
                else:  # anything else goes through the wrapper, which says what was wrong
                    d, ids = search_index(v, np.asarray(vec)[None], operator.index(k))
                    d, ids = d[0], ids[0]
            if ids[-1] >= 0:  # FAISS puts missing hits (-1) last
                return [StoreHits(d, ids, v.manifest.version)]
            keep = ids >= 0
            return [StoreHits(d[keep], ids[keep], v.manifest.version)]
        if all(q.where is NO_FILTER for q in queries):  # one FAISS call for the batch
            ks = {q.k for q in queries}
            with self._lock:
                v = self.version(collection)
                d, ids = search_index(v, np.array([q.vector for q in queries], np.float32),
                                      max(ks))
            name = v.manifest.version
            if ids[:, -1].min() >= 0:  # every slot filled: views, no masks (the usual case)
                if len(ks) == 1:  # one k for all: the rows as they are (half the cost of slicing)
                    return [StoreHits(dr, ir, name) for dr, ir in zip(d, ids, strict=True)]
                return [StoreHits(d[row, :q.k], ids[row, :q.k], name)
                        for row, q in enumerate(queries)]
            out = []
            for row, q in enumerate(queries):
                i = ids[row, :q.k]
                keep = i >= 0
                out.append(StoreHits(d[row, :q.k][keep], i[keep], name))
            return out
        jobs = []
        for q in queries:
            w = q.where
            allowed = (self._allowed(collection, w.labels, w.metadata)
                       if w.labels or w.metadata else None)
            excluded = np.asarray(w.excluded_ids, np.int64) if w.excluded_ids else None
            jobs.append(SearchJob(np.asarray(q.vector, np.float32), q.k, allowed, excluded))
        with self._lock:  # only against writers of this process (RLock: cheap uncontended)
            answers = search_batch(self.version(collection), jobs)
        out = []
        for q, a in zip(queries, answers, strict=True):
            d, ids = top_k_within(a.distances, a.ids, q.k, q.where.max_distance)
            out.append(StoreHits(d, ids, a.version))
        return out

    def describe(self, collection: str) -> StoreDescription:
        v = self.version(collection)
        m = v.manifest
        return StoreDescription("faiss", collection, m.version, int(v.index.ntotal) - m.tombstones,
                                m.dimension, m.factory, dict(m.search_params), m.recall_at_10,
                                str(v.path), {"tombstones": m.tombstones})

    def stored_ids(self, collection: str) -> np.ndarray:
        with self._lock:
            ids = stored_ids(self.version(collection).index)
        return np.sort(ids[ids >= 0])

    def stored_attributes(self, collection: str,
                          ids: Sequence[int]) -> dict[int, tuple[str, dict, str]]:
        return {}  # FAISS keeps ids only; filters read the catalogue

    def close(self) -> None:
        self._versions.clear()
