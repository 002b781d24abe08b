"""Search: checks a query, turns its filters into catalogue ids, runs it on the collection's
live index (micro-batched, :mod:`indexer.search`) and turns ids back into catalogued hits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from indexer.search import SearchJob
from indexer.stores import StoreFilter, StoreQuery
from service.batching import wait_result
from service.collection_registry import CollectionRegistry
from service.domain import CoreOptions, Hit, SearchQuery, SearchResult
from service.embedding_front import EmbeddingFront
from service.errors import InvalidInput
from service.store import EntryCache, ids_by_keys, matching_ids
from service.validation import check_count, check_keys, check_label, check_metadata


def similarity(dist2: np.ndarray, *, normalized: bool) -> np.ndarray:
    """Squared L2 distances -> similarities: cosine for L2-normalised embeddings, else
    ``1 / (1 + distance)``."""
    if normalized:
        return 1 - dist2 / 2
    return 1 / (1 + np.sqrt(np.maximum(dist2, 0)))


class Searcher:
    def __init__(self, front: EmbeddingFront, collections: CollectionRegistry,
                 sessions: sessionmaker[Session], entries: EntryCache,
                 options: CoreOptions) -> None:
        self._front, self._collections, self._sessions = front, collections, sessions
        self._entries, self._options = entries, options
        self._normalized = bool(front.embedder.spec.normalize)

    def check_query(self, q: SearchQuery, name: str) -> SearchQuery:
        """``q`` with its defaults filled in and its collection named, or ``InvalidInput``."""
        o = self._options
        k = q.k or 10
        if not 1 <= k <= o.max_k:
            raise InvalidInput(f"{name}: k must be between 1 and {o.max_k}, got {k}")
        if q.max_distance is not None and not (np.isfinite(q.max_distance)
                                               and q.max_distance >= 0):
            raise InvalidInput(f"{name}: max_distance must be a non-negative number, "
                               f"got {q.max_distance}")
        check_count(len(q.labels), o.max_filter_labels, "labels", name)
        check_count(len(q.metadata), o.max_metadata_pairs, "metadata filters", name)
        check_count(len(q.exclude_keys), o.max_exclude_keys, "excluded keys", name)
        for label in q.labels:
            check_label(label, f"{name}: label {label[:40]!r}")
        check_metadata(q.metadata, f"{name}: metadata")
        check_keys(q.exclude_keys, f"{name}: excluded key")
        live = self._collections.live(q.collection)
        return SearchQuery(q.query, k, live.collection, q.labels, q.metadata, q.max_distance,
                           q.exclude_keys)

    def batch_search(self, queries: Sequence[SearchQuery], *, deadline: float | None = None,
                     names: Sequence[str] | None = None) -> list[SearchResult]:
        """Several searches: their images embedded together, their FAISS searches batched."""
        if not queries:
            raise InvalidInput("no queries")
        if len(queries) > self._options.max_items:
            raise InvalidInput(f"{len(queries)} queries in one call; the limit is "
                               f"{self._options.max_items}")
        names = list(names) if names is not None else [f"query {i}" for i in range(len(queries))]
        queries = [self.check_query(q, n) for q, n in zip(queries, names, strict=True)]
        lives = [self._collections.live(q.collection) for q in queries]  # one lookup each
        jobs = []
        with self._sessions() as s:
            for q, live in zip(queries, lives, strict=True):
                allowed = excluded = None
                if live.pushes_filters:
                    # a vector store filters on its copies of labels and metadata itself
                    ids = ids_by_keys(s, q.exclude_keys, collection=q.collection) \
                        if q.exclude_keys else {}
                    jobs.append(StoreFilter(q.labels, dict(q.metadata), tuple(ids.values()),
                                            q.max_distance))
                    continue
                if q.labels or q.metadata:
                    allowed = np.array(matching_ids(s, collection=q.collection, labels=q.labels,
                                                    metadata=q.metadata), np.int64)
                if q.exclude_keys:  # keys that are not catalogued exclude nothing
                    excluded = np.array(list(ids_by_keys(s, q.exclude_keys,
                                                         collection=q.collection).values()),
                                        np.int64)
                jobs.append((allowed, excluded))
        got = self._front.vectors_and_faces([q.query for q in queries], deadline=deadline,
                                            names=names)
        vecs = got.vectors
        futures = [live.batcher.submit(
            StoreQuery(v, q.k, job) if live.pushes_filters else SearchJob(v, q.k, *job),
            deadline=deadline)
            for q, live, v, job in zip(queries, lives, vecs, jobs, strict=True)]
        answers = [wait_result(f, deadline, what="search") for f in futures]
        entries = self._entries.get(self._sessions,
                                    np.concatenate([a.ids[a.ids >= 0] for a in answers]))
        model_version = self._front.embedder.model_version
        results = []
        for q, a, face in zip(queries, answers, got.faces, strict=True):
            hits: list[Hit] = []
            sims = similarity(a.distances, normalized=self._normalized)
            for i, d2, sim in zip(a.ids, a.distances, sims, strict=True):
                e = entries.get(int(i)) if i >= 0 else None
                if e is None:  # no hit, or deleted from the catalogue since
                    continue
                dist = float(np.sqrt(max(float(d2), 0.0)))
                if q.max_distance is not None and dist > q.max_distance:
                    break  # hits are sorted by distance
                hits.append(Hit(e.key, e.label, dist, len(hits) + 1, float(sim), e.metadata))
            results.append(SearchResult(hits, a.version, model_version, face))
        return results
