"""The service's plain-Python core: the whole API on decoded inputs, no gRPC types."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from indexer.versions import IndexVersion
from service.batching import wait_result
from service.errors import (  # noqa: F401  (re-exported: the foundation's import path)
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from service.images import DEFAULT_FORMATS, ImagePipeline
from service.live_index import LiveIndex, SearchJob, index_root_of
from service.store import (
    BlobStore,
    CatalogEntry,
    EntryCache,
    blob_root,
    ensure_service_tables,
    entries_by_keys,
    identity_entries,
    ids_by_keys,
    matching_ids,
)
from service.validation import (
    check_count,
    check_key,
    check_keys,
    check_label,
    check_metadata,
    check_version_name,
)
from training.data.transforms import MAX_PIXELS
from training.models.embedder import Embedder

log = logging.getLogger(__name__)

MAX_K = 1000


@dataclass(frozen=True)
class CoreOptions:
    """Batching, limits and pipeline settings of a :class:`SimilarityCore`."""

    max_batch: int = 32  # images per forward pass
    max_wait_ms: float = 2.0  # longest the oldest queued image waits for a fuller batch
    search_max_batch: int = 64
    search_max_wait_ms: float = 0.0  # 0: batch whatever is queued, never wait
    decode_workers: int = 2
    max_queue: int = 1024  # queued images (or searches) before RESOURCE_EXHAUSTED
    max_pixels: int = MAX_PIXELS
    formats: tuple[str, ...] = DEFAULT_FORMATS
    face: str = "off"  # off | require | fallback (see service.face)
    max_k: int = MAX_K
    max_items: int = 64  # queries per BatchSearch, images per Embed
    max_upsert_items: int = 1000  # images per Upsert stream, keys per Delete
    max_upsert_bytes: int = 256 * 1024 * 1024  # encoded image bytes per Upsert stream
    # per query (and per upserted image for metadata): each filter is one catalogue condition
    max_filter_labels: int = 256
    max_metadata_pairs: int = 64
    max_exclude_keys: int = 1000
    keep_versions: int = 5
    blob_dir: str = ""  # where inline Upsert images are kept; "" -> <index root>/blobs
    default_threshold: float = 1.0
    catalog_cache_seconds: float = 5.0  # search hits' catalogue rows (0: always read the DB)


class CoreObserver(Protocol):
    def on_batch(self, name: str, size: int, depth: int) -> None: ...

    def on_swap(self, collection: str, outcome: str, version: str) -> None: ...


@dataclass(frozen=True)
class ImageInput:
    """An image given inline (encoded bytes) or by catalogue key."""

    data: bytes | None = None
    key: str | None = None
    collection: str = ""


@dataclass(frozen=True)
class VerifyResult:
    same: bool
    distance: float
    similarity: float
    threshold: float
    model_version: str
    # identity verification: the set compared against (distance/same are its nearest)
    enrolled_images: int = 0
    mean_distance: float = 0.0
    nearest_key: str = ""
    index_version: str = ""


@dataclass(frozen=True)
class Hit:
    key: str
    label: str
    distance: float
    rank: int
    similarity: float
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    index_version: str
    model_version: str


@dataclass(frozen=True)
class SearchQuery:
    query: ImageInput
    k: int = 10
    collection: str = ""
    labels: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    max_distance: float | None = None
    exclude_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpsertItem:
    key: str
    data: bytes
    label: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    collection: str = ""


@dataclass(frozen=True)
class ChangeResult:
    """What an Upsert or Delete did, and the index version served afterwards."""

    index_version: str
    count: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class IndexInfo:
    collection: str
    model_version: str
    index_version: str
    factory: str
    metric: str
    dimension: int
    count: int
    recall_at_10: float | None
    threshold: float
    checkpoint_sha256: str
    created_at: str
    search_params: dict
    face: str
    collections: tuple[str, ...]


def cosine_from_vectors(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


class SimilarityCore:
    """Embeds images with the model and answers from the live index of each served collection.

    ``index`` is the default collection's version; ``extra_indexes`` serve more collections
    (one index root each). Changes (Upsert, Delete) go through :mod:`service.mutations`.
    """

    def __init__(self, embedder: Embedder, index: IndexVersion, sessions: sessionmaker[Session],
                 *, default_threshold: float | None = None,
                 extra_indexes: Sequence[IndexVersion] = (), options: CoreOptions | None = None,
                 observer: CoreObserver | None = None) -> None:
        self.options = o = options or CoreOptions()
        self.embedder = embedder
        self.sessions = sessions
        ensure_service_tables(sessions)
        on_batch = observer.on_batch if observer is not None else None
        self._observer = observer
        self.entries = EntryCache(ttl=o.catalog_cache_seconds)
        self.lives: dict[str, LiveIndex] = {}
        for v in (index, *extra_indexes):
            live = LiveIndex(v, checkpoint_sha256=embedder.checkpoint_sha256, dim=embedder.dim,
                             max_batch=o.search_max_batch, max_wait_ms=o.search_max_wait_ms,
                             max_queue=o.max_queue, observer=on_batch, on_swap=self._swapped)
            if live.collection in self.lives:
                raise ValueError(f"collection {live.collection!r} is served twice")
            self.lives[live.collection] = live
        self.default_collection = next(iter(self.lives))
        self.pipeline = ImagePipeline(
            embedder, max_pixels=o.max_pixels, formats=o.formats, face=o.face,
            decode_workers=o.decode_workers, max_batch=o.max_batch, max_wait_ms=o.max_wait_ms,
            max_queue=o.max_queue, observer=on_batch)
        spec_thr = embedder.spec.threshold
        fallback = default_threshold if default_threshold is not None else o.default_threshold
        self.threshold = float(spec_thr if spec_thr is not None else fallback)

    def _swapped(self, collection: str, outcome: str, version: str) -> None:
        if outcome == "swapped":
            self.entries.clear()
        if self._observer is not None:
            self._observer.on_swap(collection, outcome, version)

    # -- collections and versions ---------------------------------------------------------
    @property
    def index(self) -> IndexVersion:
        """The default collection's served version."""
        return self.lives[self.default_collection].version

    @property
    def collections(self) -> tuple[str, ...]:
        return tuple(self.lives)

    def collection_name(self, c: str) -> str:
        return c or self.default_collection

    def live(self, collection: str = "") -> LiveIndex:
        name = self.collection_name(collection)
        live = self.lives.get(name)
        if live is None:
            raise NotFound(f"collection {name!r} is not served "
                           f"(this server serves {', '.join(map(repr, self.lives))})")
        return live

    def reload(self, collection: str = "", version: str | None = None) -> tuple[str, str, str]:
        """Serve another published version (default: CURRENT) -> (collection, previous, now)."""
        live = self.live(collection)
        old, new = live.swap(check_version_name(version) if version else None)
        return live.collection, old, new

    def swap_index(self, root: str | Path, version: str | None = None) -> str:
        """Load a version (default: CURRENT) of the collection under ``root`` and switch to it;
        in-flight searches finish on the old one."""
        root = Path(root).resolve()
        for live in self.lives.values():
            if live.root.resolve() == root:
                return live.swap(version)[1]
        raise NotFound(f"no served collection has its index under {root}")

    def watch(self, interval: float) -> None:
        """Swap to newly published versions (CURRENT polled every ``interval`` seconds)."""
        for live in self.lives.values():
            live.watch(interval)

    def blob_dir(self, live: LiveIndex) -> Path:
        return blob_root(index_root_of(live.version), live.collection, self.options.blob_dir)

    # -- inputs ---------------------------------------------------------------------------
    def vector(self, image: ImageInput, *, deadline: float | None = None) -> np.ndarray:
        """(d,) float32 embedding of an inline image or a catalogued one."""
        return self.vectors([image], deadline=deadline)[0]

    def vectors(self, images: Sequence[ImageInput], *, deadline: float | None = None,
                names: Sequence[str] | None = None) -> np.ndarray:
        """(n, d) float32: inline images embedded together (micro-batched), keys looked up."""
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        out = np.zeros((len(images), self.embedder.dim), np.float32)
        inline = []
        for i, im in enumerate(images):
            if im.data is not None and im.key is not None:
                raise InvalidInput(f"{names[i]}: give an image as bytes or as a key, not both")
            if im.data is not None:
                inline.append(i)
            elif not im.key:
                raise InvalidInput(f"{names[i]}: image is missing: set either data or key")
            else:
                check_key(im.key, f"{names[i]}: key")
        keyed = sorted(set(range(len(images))) - set(inline))
        if keyed:
            out[keyed] = self._key_vectors([images[i] for i in keyed], [names[i] for i in keyed],
                                           deadline=deadline)
        if inline:
            out[inline] = self.pipeline.embed([images[i].data for i in inline], deadline=deadline,
                                              names=[names[i] for i in inline])
        return out

    def _key_vectors(self, images: Sequence[ImageInput], names: Sequence[str], *,
                     deadline: float | None) -> np.ndarray:
        out = np.zeros((len(images), self.embedder.dim), np.float32)
        by_coll: dict[str, list[int]] = {}
        for i, im in enumerate(images):
            by_coll.setdefault(self.collection_name(im.collection), []).append(i)
        for coll, idx in by_coll.items():
            with self.sessions() as s:
                found = entries_by_keys(s, [images[i].key for i in idx], collection=coll)
            missing = [i for i in idx if images[i].key not in found]
            if missing:
                i = missing[0]
                raise NotFound(f"{names[i]}: no image with key {images[i].key!r} in collection "
                               f"{coll!r}")
            entries = [found[images[i].key] for i in idx]
            live = self.lives.get(coll)
            present = np.zeros(len(idx), bool)
            if live is not None:
                vecs, present = live.reconstruct(np.array([e.id for e in entries], np.int64))
                out[[idx[j] for j in np.flatnonzero(present)]] = vecs[present]
            for j in np.flatnonzero(~present):  # catalogued, not in the index: embed the file
                data = self._image_bytes(live, entries[j], names[idx[j]])
                out[idx[j]] = self.pipeline.embed([data], deadline=deadline,
                                                  names=[names[idx[j]]])[0]
        return out

    def _image_bytes(self, live: LiveIndex | None, e: CatalogEntry, name: str) -> bytes:
        """The encoded image of a catalogue row. An upload stored before blob paths were kept
        relative to the index root holds a path relative to that server's working directory:
        when it is not found there, its content is looked up in the collection's blob store."""
        if e.storage == "blob" and live is None:
            raise NotFound(f"{name}: {e.key!r} is kept in the blob store of a collection this "
                           "server does not serve")
        path = e.file(live.root) if live is not None else Path(e.path)
        try:
            return path.read_bytes()
        except OSError as err:
            if live is not None and e.storage == "file" and not path.is_absolute():
                blob = BlobStore(self.blob_dir(live)).path_for(e.sha256, path.suffix[1:])
                if blob.is_file():
                    return blob.read_bytes()
            raise NotFound(f"{name}: the file of {e.key!r} is gone: {err}") from err

    def _threshold(self, threshold: float | None) -> float:
        thr = self.threshold if threshold is None else float(threshold)
        if not np.isfinite(thr) or thr < 0:
            raise InvalidInput(f"threshold must be a non-negative number, got {thr}")
        return thr

    def _similarity(self, dist2: np.ndarray) -> np.ndarray:
        if self.embedder.spec.normalize:
            return 1 - dist2 / 2
        return 1 / (1 + np.sqrt(np.maximum(dist2, 0)))

    # -- Verify ---------------------------------------------------------------------------
    def verify(self, a: ImageInput, b: ImageInput, *, threshold: float | None = None,
               deadline: float | None = None) -> VerifyResult:
        thr = self._threshold(threshold)
        va, vb = self.vectors([a, b], deadline=deadline, names=["image a", "image b"])
        d = float(np.linalg.norm(va - vb))
        return VerifyResult(d <= thr, d, cosine_from_vectors(va, vb), thr,
                            self.embedder.model_version)

    def verify_identity(self, image: ImageInput, identity: str, *, collection: str = "",
                        threshold: float | None = None,
                        deadline: float | None = None) -> VerifyResult:
        """Compare an image with every enrolled image of ``identity`` (a label); the decision
        is the nearest one's (mean distance reported beside it)."""
        thr = self._threshold(threshold)
        check_label(identity, "identity")
        live = self.live(collection)
        with self.sessions() as s:
            enrolled = identity_entries(s, identity, collection=live.collection)
        if not enrolled:
            raise NotFound(f"identity {identity!r} has no enrolled images in collection "
                           f"{live.collection!r}")
        version = live.version.manifest.version
        vecs, present = live.reconstruct(np.array([i for i, _ in enrolled], np.int64))
        if not present.any():
            raise NotFound(f"identity {identity!r} is catalogued but none of its images is in "
                           f"index version {version}")
        q = self.vectors([image], deadline=deadline, names=["image a"])[0]
        vecs = vecs[present]
        keys = [k for (_, k), p in zip(enrolled, present, strict=True) if p]
        dists = np.linalg.norm(vecs - q[None], axis=1)
        best = int(np.argmin(dists))
        return VerifyResult(bool(dists[best] <= thr), float(dists[best]),
                            cosine_from_vectors(q, vecs[best]), thr, self.embedder.model_version,
                            enrolled_images=len(keys), mean_distance=float(dists.mean()),
                            nearest_key=keys[best], index_version=version)

    # -- Search ---------------------------------------------------------------------------
    def search(self, query: ImageInput, k: int = 10, *, collection: str = "",
               labels: Sequence[str] = (), metadata: Mapping[str, str] | None = None,
               max_distance: float | None = None, exclude_keys: Sequence[str] = (),
               deadline: float | None = None) -> SearchResult:
        q = SearchQuery(query, k, collection, tuple(labels), dict(metadata or {}), max_distance,
                        tuple(exclude_keys))
        return self.batch_search([q], deadline=deadline, names=["query"])[0]

    def _check_query(self, q: SearchQuery, name: str) -> SearchQuery:
        k = q.k or 10
        if not 1 <= k <= self.options.max_k:
            raise InvalidInput(f"{name}: k must be between 1 and {self.options.max_k}, got {k}")
        if q.max_distance is not None and not (np.isfinite(q.max_distance)
                                               and q.max_distance >= 0):
            raise InvalidInput(f"{name}: max_distance must be a non-negative number, "
                               f"got {q.max_distance}")
        o = self.options
        check_count(len(q.labels), o.max_filter_labels, "labels", name)
        check_count(len(q.metadata), o.max_metadata_pairs, "metadata filters", name)
        check_count(len(q.exclude_keys), o.max_exclude_keys, "excluded keys", name)
        for label in q.labels:
            check_label(label, f"{name}: label {label[:40]!r}")
        check_metadata(q.metadata, f"{name}: metadata")
        check_keys(q.exclude_keys, f"{name}: excluded key")
        live = self.live(q.collection)
        return SearchQuery(q.query, k, live.collection, q.labels, q.metadata, q.max_distance,
                           q.exclude_keys)

    def batch_search(self, queries: Sequence[SearchQuery], *, deadline: float | None = None,
                     names: Sequence[str] | None = None) -> list[SearchResult]:
        """Several searches: their images embedded together, their FAISS searches batched."""
        if not queries:
            raise InvalidInput("no queries")
        if len(queries) > self.options.max_items:
            raise InvalidInput(f"{len(queries)} queries in one call; the limit is "
                               f"{self.options.max_items}")
        names = list(names) if names is not None else [f"query {i}" for i in range(len(queries))]
        queries = [self._check_query(q, n) for q, n in zip(queries, names, strict=True)]
        jobs = []
        with self.sessions() as s:
            for q in queries:
                allowed = excluded = None
                if q.labels or q.metadata:
                    allowed = np.array(matching_ids(s, collection=q.collection, labels=q.labels,
                                                    metadata=q.metadata), np.int64)
                if q.exclude_keys:  # keys that are not catalogued exclude nothing
                    excluded = np.array(list(ids_by_keys(s, q.exclude_keys,
                                                         collection=q.collection).values()),
                                        np.int64)
                jobs.append((allowed, excluded))
        vecs = self.vectors([q.query for q in queries], deadline=deadline, names=names)
        futures = [self.lives[q.collection].batcher.submit(
            SearchJob(v, q.k, allowed, excluded), deadline=deadline)
            for q, v, (allowed, excluded) in zip(queries, vecs, jobs, strict=True)]
        answers = [wait_result(f, deadline, what="search") for f in futures]
        entries = self.entries.get(self.sessions,
                                   np.concatenate([a.ids[a.ids >= 0] for a in answers]))
        results = []
        for q, a in zip(queries, answers, strict=True):
            hits: list[Hit] = []
            for i, d2, sim in zip(a.ids, a.distances, self._similarity(a.distances), strict=True):
                e = entries.get(int(i)) if i >= 0 else None
                if e is None:  # no hit, or deleted from the catalogue since
                    continue
                dist = float(np.sqrt(max(float(d2), 0.0)))
                if q.max_distance is not None and dist > q.max_distance:
                    break  # hits are sorted by distance
                hits.append(Hit(e.key, e.label, dist, len(hits) + 1, float(sim), e.metadata))
            results.append(SearchResult(hits, a.version, self.embedder.model_version))
        return results

    # -- Embed ----------------------------------------------------------------------------
    def embed(self, images: Sequence[ImageInput], *, deadline: float | None = None) -> np.ndarray:
        """(n, d) float32 embeddings (L2-normalised rows for cosine models)."""
        if not images:
            raise InvalidInput("no images")
        if len(images) > self.options.max_items:
            raise InvalidInput(f"{len(images)} images in one call; the limit is "
                               f"{self.options.max_items}")
        return self.vectors(images, deadline=deadline)

    # -- Upsert / Delete ------------------------------------------------------------------
    def upsert(self, items: Iterable[UpsertItem], *, deadline: float | None = None,
               abandoned: Callable[[], bool] | None = None) -> ChangeResult:
        """All of ``items`` or none; not applied once ``abandoned()`` says the caller left."""
        from service.mutations import upsert

        return upsert(self, items, deadline=deadline, abandoned=abandoned)

    def delete(self, keys: Sequence[str], *, collection: str = "",
               ignore_missing: bool = False) -> ChangeResult:
        from service.mutations import delete

        return delete(self, keys, collection=collection, ignore_missing=ignore_missing)

    # -- DescribeIndex --------------------------------------------------------------------
    def describe(self, collection: str = "") -> IndexInfo:
        live = self.live(collection)
        v = live.version
        m = v.manifest
        return IndexInfo(live.collection, self.embedder.model_version, m.version, m.factory,
                         self.embedder.spec.metric, m.dimension, int(v.index.ntotal),
                         m.recall_at_10, self.threshold, m.checkpoint_sha256, m.created_at,
                         dict(m.search_params), self._face_info(), self.collections)

    def _face_info(self) -> str:
        align = self.embedder.spec.face_align
        return f"{self.options.face} (the model aligns faces: {align})" if align \
            else self.options.face

    def close(self) -> None:
        """Stop the batchers and watchers (queued work finishes first)."""
        for live in self.lives.values():
            live.close()
        self.pipeline.close()

