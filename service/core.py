"""The service's plain-Python core: the whole API on decoded inputs, no gRPC types.

:class:`SimilarityCore` is a facade over parts with one job each, built here and shared:

- :class:`~service.collection_registry.CollectionRegistry`: the served collections' live
  indexes (hot swaps, CURRENT watchers);
- :class:`~service.embedding_front.EmbeddingFront`: images (bytes or keys) to vectors
  (decoding, micro-batching, the ``Embedder``);
- :class:`~service.searcher.Searcher`: filtered and unfiltered search (:mod:`indexer.search`);
- :class:`~service.verifier.Verifier`: pair and identity verification;
- :class:`~service.image_files.ImageFiles`: catalogued images' files and blob stores;
- :class:`~service.mutations.Changes`: Upsert and Delete.

The servicers (gRPC and HTTP) call the facade; the values they exchange are in
:mod:`service.domain`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from indexer.stores import VectorStore
from indexer.versions import IndexVersion
from service.collection_registry import CollectionRegistry, Served
from service.domain import (  # noqa: F401  (re-exported: the servicers' import path)
    MAX_K,
    ChangeResult,
    CoreObserver,
    CoreOptions,
    Hit,
    ImageInput,
    IndexInfo,
    SearchQuery,
    SearchResult,
    UpsertItem,
    VerifyResult,
)
from service.embedding_front import EmbeddingFront
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
from service.image_files import ImageFiles
from service.images import Embedded, ImagePipeline
from service.live_index import LiveIndex
from service.mutations import Changes
from service.searcher import Searcher
from service.store import CatalogEntry, EntryCache, ensure_service_tables
from service.store_index import StoreIndex
from service.verifier import Verifier, cosine_from_vectors  # noqa: F401  (re-exported)
from training.models.embedder import Embedder

log = logging.getLogger(__name__)


class SimilarityCore:
    """Embeds images with the model and answers from the live index of each served collection.

    ``index`` is the default collection's version; ``extra_indexes`` serve more collections
    (one index root each). With a ``store`` (Milvus), ``stored_collections`` are served from it
    instead (``index`` None; ``index_root`` holds their blobs and catalogued files)."""

    def __init__(self, embedder: Embedder, index: IndexVersion | None,
                 sessions: sessionmaker[Session], *, default_threshold: float | None = None,
                 extra_indexes: Sequence[IndexVersion] = (), options: CoreOptions | None = None,
                 observer: CoreObserver | None = None, store: VectorStore | None = None,
                 stored_collections: Sequence[str] = (),
                 index_root: str | Path = "var/index") -> None:
        self.options = o = options or CoreOptions()
        self.embedder = embedder
        self.sessions = sessions
        ensure_service_tables(sessions)
        on_batch = observer.on_batch if observer is not None else None
        self._observer = observer
        self.entries = EntryCache(ttl=o.catalog_cache_seconds)
        self.store = store
        stored = []
        try:
            for name in stored_collections:
                stored.append(StoreIndex(
                    store, name, root=index_root, sessions=sessions,
                    checkpoint_sha256=embedder.checkpoint_sha256, dim=embedder.dim,
                    max_batch=o.search_max_batch, max_wait_ms=o.search_max_wait_ms,
                    max_queue=o.max_queue, observer=on_batch, on_swap=self._swapped))
        except BaseException:
            for live in stored:
                live.close()
            raise
        self.registry = CollectionRegistry(
            [v for v in (index, *extra_indexes) if v is not None],
            checkpoint_sha256=embedder.checkpoint_sha256,
            dim=embedder.dim, max_batch=o.search_max_batch, max_wait_ms=o.search_max_wait_ms,
            max_queue=o.max_queue, on_batch=on_batch, on_swap=self._swapped, stored=stored)
        self.pipeline = ImagePipeline(
            embedder, max_pixels=o.max_pixels, formats=o.formats, face=o.face,
            decode_workers=o.decode_workers, max_batch=o.max_batch, max_wait_ms=o.max_wait_ms,
            max_queue=o.max_queue, observer=on_batch)
        self.files = ImageFiles(blob_dir=o.blob_dir)
        self.front = EmbeddingFront(embedder, self.pipeline, self.registry, self.files, sessions)
        spec_thr = embedder.spec.threshold
        fallback = default_threshold if default_threshold is not None else o.default_threshold
        self.verifier = Verifier(self.front, self.registry, sessions,
                                 threshold=float(spec_thr if spec_thr is not None else fallback))
        self.searcher = Searcher(self.front, self.registry, sessions, self.entries, o)
        self.changes = Changes(collections=self.registry, front=self.front, files=self.files,
                               sessions=sessions, entries=self.entries, options=o)

    def _swapped(self, collection: str, outcome: str, version: str) -> None:
        if outcome == "swapped":
            self.entries.clear()
        if self._observer is not None:
            self._observer.on_swap(collection, outcome, version)

    # -- collections and versions ---------------------------------------------------------
    @property
    def lives(self) -> dict[str, Served]:
        return self.registry.lives

    @property
    def default_collection(self) -> str:
        return self.registry.default

    @property
    def index(self) -> IndexVersion:
        """The default collection's served version."""
        return self.registry.live().version

    @property
    def collections(self) -> tuple[str, ...]:
        return self.registry.names

    @property
    def threshold(self) -> float:
        return self.verifier.threshold

    def collection_name(self, c: str) -> str:
        return self.registry.name(c)

    def live(self, collection: str = "") -> Served:
        return self.registry.live(collection)

    def reload(self, collection: str = "", version: str | None = None) -> tuple[str, str, str]:
        """Serve another published version (default: CURRENT) -> (collection, previous, now)."""
        return self.registry.reload(collection, version)

    def swap_index(self, root: str | Path, version: str | None = None) -> str:
        """Load a version (default: CURRENT) of the collection under ``root`` and switch to it;
        in-flight searches finish on the old one."""
        return self.registry.swap_root(root, version)

    def watch(self, interval: float) -> None:
        """Swap to newly published versions (CURRENT polled every ``interval`` seconds)."""
        self.registry.watch(interval)

    def blob_dir(self, live: LiveIndex) -> Path:
        return self.files.blob_dir(live)

    def image_bytes(self, live: LiveIndex | None, entry: CatalogEntry, name: str) -> bytes:
        """The encoded image of a catalogue row (see :meth:`ImageFiles.read`)."""
        return self.files.read(live, entry, name)

    # -- inputs ---------------------------------------------------------------------------
    def vector(self, image: ImageInput, *, deadline: float | None = None) -> np.ndarray:
        """(d,) float32 embedding of an inline image or a catalogued one."""
        return self.front.vector(image, deadline=deadline)

    def vectors(self, images: Sequence[ImageInput], *, deadline: float | None = None,
                names: Sequence[str] | None = None) -> np.ndarray:
        """(n, d) float32: inline images embedded together (micro-batched), keys looked up."""
        return self.front.vectors(images, deadline=deadline, names=names)

    # -- Verify ---------------------------------------------------------------------------
    def verify(self, a: ImageInput, b: ImageInput, *, threshold: float | None = None,
               deadline: float | None = None) -> VerifyResult:
        return self.verifier.verify(a, b, threshold=threshold, deadline=deadline)

    def verify_identity(self, image: ImageInput, identity: str, *, collection: str = "",
                        threshold: float | None = None,
                        deadline: float | None = None) -> VerifyResult:
        """Compare an image with every enrolled image of ``identity`` (a label); the decision
        is the nearest one's (mean distance reported beside it)."""
        return self.verifier.verify_identity(image, identity, collection=collection,
                                             threshold=threshold, deadline=deadline)

    # -- Search ---------------------------------------------------------------------------
    def search(self, query: ImageInput, k: int = 10, *, collection: str = "",
               labels: Sequence[str] = (), metadata: Mapping[str, str] | None = None,
               max_distance: float | None = None, exclude_keys: Sequence[str] = (),
               deadline: float | None = None) -> SearchResult:
        q = SearchQuery(query, k, collection, tuple(labels), dict(metadata or {}), max_distance,
                        tuple(exclude_keys))
        return self.searcher.batch_search([q], deadline=deadline, names=["query"])[0]

    def batch_search(self, queries: Sequence[SearchQuery], *, deadline: float | None = None,
                     names: Sequence[str] | None = None) -> list[SearchResult]:
        """Several searches: their images embedded together, their FAISS searches batched."""
        return self.searcher.batch_search(queries, deadline=deadline, names=names)

    # -- Embed ----------------------------------------------------------------------------
    def embed(self, images: Sequence[ImageInput], *, deadline: float | None = None) -> np.ndarray:
        """(n, d) float32 embeddings (L2-normalised rows for cosine models)."""
        return self.embed_faces(images, deadline=deadline).vectors

    def embed_faces(self, images: Sequence[ImageInput], *,
                    deadline: float | None = None) -> Embedded:
        """:meth:`embed`, with what the face step did with each inline image."""
        if not images:
            raise InvalidInput("no images")
        if len(images) > self.options.max_items:
            raise InvalidInput(f"{len(images)} images in one call; the limit is "
                               f"{self.options.max_items}")
        return self.front.vectors_and_faces(images, deadline=deadline)

    # -- Upsert / Delete ------------------------------------------------------------------
    def upsert(self, items: Iterable[UpsertItem], *, deadline: float | None = None,
               abandoned: Callable[[], bool] | None = None) -> ChangeResult:
        """All of ``items`` or none; not applied once ``abandoned()`` says the caller left."""
        return self.changes.upsert(items, deadline=deadline, abandoned=abandoned)

    def delete(self, keys: Sequence[str], *, collection: str = "",
               ignore_missing: bool = False) -> ChangeResult:
        return self.changes.delete(keys, collection=collection, ignore_missing=ignore_missing)

    # -- DescribeIndex --------------------------------------------------------------------
    def describe(self, collection: str = "") -> IndexInfo:
        live = self.live(collection)
        v = live.served()
        return IndexInfo(live.collection, self.embedder.model_version, v.version, v.factory,
                         self.embedder.spec.metric, v.dimension, v.count, v.recall_at_10,
                         self.threshold, v.checkpoint_sha256,
                         v.created_at, v.search_params, self._face_info(), self.collections)

    def _face_info(self) -> str:
        return self.embedder.spec.face_step()  # the checkpoint's, for indexing and queries

    def close(self) -> None:
        """Stop the batchers and watchers (queued work finishes first)."""
        self.registry.close()
        self.pipeline.close()
        if self.store is not None:
            self.store.close()
