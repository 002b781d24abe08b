"""The service's plain-Python core: Verify and Search on decoded inputs, no gRPC types."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import DEFAULT_COLLECTION, image_by_key, images_by_ids
from indexer.versions import IndexVersion, load_index_version
from training.embedder import Embedder
from training.transforms import ImageDecodeError, decode_image

log = logging.getLogger(__name__)

MAX_K = 1000


class ServiceError(Exception):
    """Base of the errors the gRPC layer maps onto status codes."""


class InvalidInput(ServiceError):
    pass


class NotFound(ServiceError):
    pass


class FailedPrecondition(ServiceError):
    pass


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


@dataclass(frozen=True)
class Hit:
    key: str
    label: str
    distance: float
    rank: int
    similarity: float


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    index_version: str
    model_version: str


def cosine_from_vectors(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


class SimilarityCore:
    """Embeds query images with the model and answers from the current index version."""

    def __init__(self, embedder: Embedder, index: IndexVersion, sessions: sessionmaker[Session],
                 *, default_threshold: float = 1.0) -> None:
        self.embedder = embedder
        self.sessions = sessions
        self._lock = threading.Lock()
        self._index = self._checked(index)
        spec_thr = embedder.spec.threshold
        self.threshold = float(spec_thr if spec_thr is not None else default_threshold)

    def _checked(self, index: IndexVersion) -> IndexVersion:
        m = index.manifest
        if m.checkpoint_sha256 != self.embedder.checkpoint_sha256:
            raise FailedPrecondition(
                f"index version {m.version} was built with checkpoint {m.checkpoint_sha256[:12]}, "
                f"but the service runs {self.embedder.checkpoint_sha256[:12]}")
        if m.dimension != self.embedder.dim:
            raise FailedPrecondition(f"index dimension {m.dimension} != model's {self.embedder.dim}")
        return index

    @property
    def index(self) -> IndexVersion:
        return self._index

    def swap_index(self, root: str | Path, version: str | None = None) -> str:
        """Load a version (default: CURRENT) and switch to it; in-flight searches finish on the old."""
        new = self._checked(load_index_version(root, version))
        with self._lock:
            self._index = new
        return new.manifest.version

    # -- inputs ---------------------------------------------------------------------------
    def _collection(self, c: str) -> str:
        return c or self._index.manifest.collection or DEFAULT_COLLECTION

    def vector(self, image: ImageInput) -> np.ndarray:
        """(d,) float32 embedding of an inline image or a catalogued one."""
        if image.data is not None and image.key is not None:
            raise InvalidInput("give an image as bytes or as a key, not both")
        if image.data is not None:
            try:
                pil = decode_image(image.data)
            except ImageDecodeError as e:
                raise InvalidInput(str(e)) from e
            return self.embedder.embed_images([pil])[0]
        if image.key:
            collection = self._collection(image.collection)
            with self.sessions() as s:
                row = image_by_key(s, image.key, collection=collection)
            if row is None:
                raise NotFound(f"no image with key {image.key!r} in collection {collection!r}")
            try:
                return self._index.index.reconstruct(row.id)
            except RuntimeError:  # catalogued but not in this index version: embed the file
                with open(row.path, "rb") as f:
                    return self.embedder.embed_images([decode_image(f.read())])[0]
        raise InvalidInput("image is missing: set either data or key")

    # -- API ------------------------------------------------------------------------------
    def verify(self, a: ImageInput, b: ImageInput, *, threshold: float | None = None) -> VerifyResult:
        va, vb = self.vector(a), self.vector(b)
        thr = self.threshold if threshold is None else float(threshold)
        if not np.isfinite(thr) or thr < 0:
            raise InvalidInput(f"threshold must be a non-negative number, got {thr}")
        d = float(np.linalg.norm(va - vb))
        return VerifyResult(d <= thr, d, cosine_from_vectors(va, vb), thr,
                            self.embedder.model_version)

    def search(self, query: ImageInput, k: int = 10, *, collection: str = "") -> SearchResult:
        if k == 0:
            k = 10
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"k must be between 1 and {MAX_K}, got {k}")
        idx = self._index
        if collection and collection != idx.manifest.collection:
            raise NotFound(f"collection {collection!r} is not served "
                           f"(this server serves {idx.manifest.collection!r})")
        q = self.vector(query)
        d2, ids = idx.index.search(q[None].astype(np.float32), min(k, idx.index.ntotal))
        pairs = [(int(i), float(d)) for i, d in zip(ids[0], d2[0], strict=True) if i >= 0]
        with self.sessions() as s:
            rows = images_by_ids(s, [i for i, _ in pairs])
        hits = []
        for i, dist2 in pairs:
            row = rows.get(i)
            if row is None:  # deleted from the catalogue since the index was built
                continue
            dist = float(np.sqrt(max(dist2, 0.0)))
            sim = 1 - dist2 / 2 if self.embedder.spec.normalize else 1 / (1 + dist)
            hits.append(Hit(row.key, row.label, dist, len(hits) + 1, float(sim)))
        return SearchResult(hits, idx.manifest.version, self.embedder.model_version)
