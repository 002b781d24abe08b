"""The vector store contract: the protocol and the plain values it takes and returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class StoreFilter:
    """What a query may return: one of ``labels`` (empty: any), every ``metadata`` pair (string
    equality), none of ``excluded_ids``, and (L2, not squared) distance at most ``max_distance``.
    Values are data, never query syntax (the Milvus backend escapes them)."""

    labels: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    excluded_ids: tuple[int, ...] = ()
    max_distance: float | None = None

    @property
    def restricts_ids(self) -> bool:
        return bool(self.labels or self.metadata or self.excluded_ids)


NO_FILTER = StoreFilter()


@dataclass(frozen=True)
class StoreQuery:
    """(d,) float32 query vector, k, filter."""

    vector: np.ndarray
    k: int
    where: StoreFilter = NO_FILTER


@dataclass(slots=True)  # not frozen: built once per query on the hot path (frozen inits cost)
class StoreHits:
    """(<= k,) squared L2 distances, ascending, and catalogue ids, from serving ``version``."""

    distances: np.ndarray
    ids: np.ndarray
    version: str


@dataclass(frozen=True)
class StoreDescription:
    """What serves a collection: backend, version, size, index type, tuned search parameters,
    recall@10 measured against exact search when the version was published, and where it is."""

    backend: str
    collection: str
    version: str
    count: int
    dimension: int
    index_type: str
    search_params: dict = field(default_factory=dict)
    recall_at_10: float | None = None
    location: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Items:
    """Vectors to store: ``ids`` (n,) int64 catalogue ids, ``vectors`` (n, d) float32, the
    catalogue's ``labels`` and ``metadata`` of each (copies, for filtering), and ``contents``:
    the sha256 of the image each vector was embedded from ("" unknown), so that a check can
    tell a vector of a since-replaced image from a current one."""

    ids: np.ndarray
    vectors: np.ndarray
    labels: Sequence[str] = ()
    metadata: Sequence[Mapping[str, Any]] = ()
    contents: Sequence[str] = ()

    def __post_init__(self) -> None:
        ids = np.ascontiguousarray(self.ids, np.int64)
        vectors = np.ascontiguousarray(self.vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"vectors must be ({len(ids)}, d), got {vectors.shape}")
        labels = list(self.labels) or [""] * len(ids)
        metadata = list(self.metadata) or [{}] * len(ids)
        contents = list(self.contents) or [""] * len(ids)
        if len(labels) != len(ids) or len(metadata) != len(ids) or len(contents) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(labels)} labels, {len(metadata)} "
                             f"metadata, {len(contents)} contents")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "metadata", metadata)
        object.__setattr__(self, "contents", contents)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Items:
        return Items(self.ids[rows], self.vectors[rows], [self.labels[i] for i in rows],
                     [self.metadata[i] for i in rows], [self.contents[i] for i in rows])


@runtime_checkable
class VectorStore(Protocol):
    """Where a collection's vectors are stored and searched. Thread-safe for concurrent
    searches; writers of one collection take turns (the caller's publish lock)."""

    backend: str

    def publish(self, collection: str, items: Items, *, model: Any = None,
                session: Any = None, keep: int = 2) -> StoreDescription:
        """Build a new version from ``items`` (all of the collection), measure its recall@10
        against exact search, and make it the serving one atomically; record it as the
        collection's ``index_versions`` row in ``session``'s transaction when given.
        ``model``: an :class:`indexer.publish.ModelIdentity`."""
        ...

    def add(self, collection: str, items: Items) -> None:
        """Insert or replace (by id) vectors in the serving version."""
        ...

    def remove(self, collection: str, ids: Sequence[int]) -> int:
        """Delete ids from the serving version; returns how many were stored."""
        ...

    def search(self, collection: str, queries: Sequence[StoreQuery]) -> list[StoreHits]:
        """One answer per query, in order."""
        ...

    def describe(self, collection: str) -> StoreDescription: ...

    def stored_ids(self, collection: str) -> np.ndarray:
        """(n,) int64 ids in the serving version."""
        ...

    def stored_attributes(self, collection: str,
                          ids: Sequence[int]) -> dict[int, tuple[str, dict, str]]:
        """By id, the (label, metadata) copies the store filters on and the sha256 of the
        image the vector was embedded from ("" for a row written without one); {} where the
        store keeps none."""
        ...

    def close(self) -> None: ...


def top_k_within(distances: np.ndarray, ids: np.ndarray, k: int,
                 max_distance: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Drop missing hits (id -1) and those past ``max_distance`` (L2; ``distances`` squared,
    ascending), keep k. Exact: the top k of those within the distance is the top k's prefix."""
    keep = ids >= 0
    if max_distance is not None:
        keep &= distances <= max_distance ** 2
    d, i = distances[keep][:k], ids[keep][:k]
    return np.ascontiguousarray(d, np.float32), np.ascontiguousarray(i, np.int64)
