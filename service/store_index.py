"""One collection served from a shared vector store (Milvus): the store's alias names the serving
version, no index is on this server's disk, and filters are pushed down to the store.

What :class:`~service.live_index.LiveIndex` is for a FAISS index version, :class:`StoreIndex` is
for a store collection: the same batcher (``batcher.submit(query)``), ``reconstruct``,
``write_lock``, ``swap``, ``served``; the searcher and the changes branch on ``pushes_filters``.
Every replica names the same alias, so a version published by one process (``imgsim reindex
--vector-store``) serves everywhere at once; this server only checks, once per version, that it
was embedded by its model (the catalogue's ``index_versions`` row names the checkpoint).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import IndexVersionRow, ModelRow
from indexer.stores import StoreDescription, StoreHits, StoreQuery, VectorStore
from service.batching import BatchObserver, MicroBatcher
from service.domain import ServedVersion
from service.errors import FailedPrecondition, NotFound, Unavailable
from service.live_index import SwapObserver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Recorded:
    """The catalogue's row of a store version (recall and parameters measured at publish)."""

    recall_at_10: float | None
    search_params: dict
    created_at: str
    checkpoint_sha256: str


def _recorded(sessions: sessionmaker[Session], collection: str, version: str) -> _Recorded | None:
    with sessions() as s:
        row = s.scalars(select(IndexVersionRow).where(IndexVersionRow.collection == collection,
                                                      IndexVersionRow.name == version)
                        ).one_or_none()
        if row is None:
            return None
        sha = ""
        if row.model_id is not None:
            sha = s.scalar(select(ModelRow.checkpoint_sha256).where(ModelRow.id == row.model_id))
        params = dict(row.params or {})
        return _Recorded(row.recall_at_10, dict(params.get("search") or {}),
                         row.created_at.isoformat() if row.created_at else "", sha or "")


def _unavailable(store: VectorStore, e: Exception) -> Unavailable:
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    return Unavailable(f"vector store {store.backend}: {first}")


class StoreIndex:
    pushes_filters = True  # labels, metadata, excluded ids and max_distance go to the store

    def __init__(self, store: VectorStore, collection: str, *, root: str | Path,
                 sessions: sessionmaker[Session], checkpoint_sha256: str, dim: int,
                 max_batch: int = 64, max_wait_ms: float = 0.0, max_queue: int = 4096,
                 observer: BatchObserver | None = None,
                 on_swap: SwapObserver | None = None) -> None:
        self.store, self.collection = store, collection
        self.root = Path(root)  # blobs and catalogued files; no index here
        self._sessions = sessions
        self.checkpoint_sha256, self.dim = checkpoint_sha256, dim
        self.write_lock = threading.Lock()
        self._on_swap = on_swap
        self._lock = threading.Lock()
        self._checked: tuple[str, _Recorded | None] | None = None  # (version, its row)
        self._desc = self._check(self._describe(fresh=True))  # refuses to start on a bad one
        self.batcher: MicroBatcher[StoreQuery, StoreHits] = MicroBatcher(
            self._search_batch, name=f"search:{collection}", max_batch=max_batch,
            max_wait_ms=max_wait_ms, max_queue=max_queue, observer=observer)

    # -- which version serves -------------------------------------------------------------
    def _describe(self, *, fresh: bool = False) -> StoreDescription:
        try:
            return self.store.describe(self.collection, fresh=fresh)  # type: ignore[call-arg]
        except LookupError as e:
            raise NotFound(str(e)) from e
        except Exception as e:  # the store's own errors: a server gone, a timeout
            raise _unavailable(self.store, e) from e

    def _check(self, desc: StoreDescription) -> StoreDescription:
        """Refuse a version embedded by another model or of another dimension (checked once
        per version: the alias may move under this server at any time)."""
        if self._checked is not None and self._checked[0] == desc.version:
            return desc
        if desc.dimension != self.dim:
            self._notify("refused", desc.version)
            raise FailedPrecondition(f"{self.store.backend} version {desc.version} of "
                                     f"{self.collection!r} has dimension {desc.dimension}, the "
                                     f"model {self.dim}")
        row = _recorded(self._sessions, self.collection, desc.version)
        if row is not None and row.checkpoint_sha256 and \
                row.checkpoint_sha256 != self.checkpoint_sha256:
            self._notify("refused", desc.version)
            raise FailedPrecondition(
                f"{self.store.backend} version {desc.version} of {self.collection!r} was "
                f"embedded with checkpoint {row.checkpoint_sha256[:12]}, but the service runs "
                f"{self.checkpoint_sha256[:12]}")
        if row is None:
            log.warning("%s version %s of %s has no catalogue row: its model is not checked",
                        self.store.backend, desc.version, self.collection)
        with self._lock:
            previous = self._checked[0] if self._checked is not None else None
            self._checked = (desc.version, row)
        if previous is not None:
            log.info("index %s: the store now serves %s (was %s)", self.collection,
                     desc.version, previous,
                     extra={"collection": self.collection, "index_version": desc.version})
            self._notify("swapped", desc.version)
        return desc

    def current(self, *, fresh: bool = False) -> StoreDescription:
        self._desc = desc = self._check(self._describe(fresh=fresh))
        return desc

    @property
    def version_name(self) -> str:
        return self.current().version

    def served(self) -> ServedVersion:
        desc = self.current()
        row = self._checked[1] if self._checked is not None else None
        recall = desc.recall_at_10 if desc.recall_at_10 is not None else (
            row.recall_at_10 if row is not None else None)
        params = desc.search_params if desc.recall_at_10 is not None or row is None \
            else (row.search_params or desc.search_params)
        return ServedVersion(desc.version, f"{desc.backend}:{desc.index_type}", desc.dimension,
                             self.count(), recall,
                             row.checkpoint_sha256 if row is not None else "",
                             row.created_at if row is not None else "", dict(params),
                             desc.location)

    def count(self) -> int:
        count = getattr(self.store, "count", None)
        return int(count(self.collection)) if count is not None else self.current().count

    # -- searching -------------------------------------------------------------------------
    def _search_batch(self, queries: list[StoreQuery]) -> list[StoreHits]:
        self.current()  # a version another model embedded is refused, not searched
        try:
            return self.store.search(self.collection, queries)
        except Exception as e:  # the store's own errors (a server gone): not INTERNAL
            raise _unavailable(self.store, e) from e

    def search(self, query: StoreQuery, *, deadline: float | None = None) -> StoreHits:
        return self.batcher.run(query, deadline=deadline)

    def reconstruct(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors of ``ids`` -> ((m, d) float32, (m,) bool present)."""
        ids = np.asarray(ids, np.int64)
        out = np.zeros((len(ids), self.dim), np.float32)
        present = np.zeros(len(ids), bool)
        if len(ids):
            found = self.store.vectors(self.collection, ids.tolist())  # type: ignore[attr-defined]
            for j, i in enumerate(ids.tolist()):
                if i in found:
                    out[j], present[j] = found[i], True
        return out, present

    # -- versions: the alias decides ------------------------------------------------------
    def swap(self, version: str | None = None) -> tuple[str, str]:
        """Serve what the store's alias names now -> (previous, now). A version other than
        the alias's is refused: moving the alias would move every replica (publish instead)."""
        with self.write_lock:
            old = self._desc.version
            desc = self.current(fresh=True)
            if version and version != desc.version:
                raise FailedPrecondition(
                    f"collection {self.collection!r} is served by the {self.store.backend} "
                    f"alias, which names {desc.version}; every replica follows it, so another "
                    f"version ({version!r}) is served by publishing it (imgsim reindex "
                    f"--vector-store ..., imgsim store publish)")
            return old, desc.version

    def _notify(self, outcome: str, version: str) -> None:
        if self._on_swap is not None:
            self._on_swap(self.collection, outcome, version)

    def watch(self, interval: float) -> None:
        """Nothing to poll: searches name the alias, and the version is checked on each
        batch (at most ``describe_ttl`` late)."""

    def close(self) -> None:
        self.batcher.close()
