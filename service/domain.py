"""The core's plain values: options, inputs and results (what the servicers convert protobuf and
JSON to and from). No behaviour: the parts that use them import them from here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from service.limits import DEFAULT_FORMATS, MAX_K
from training.data.limits import MAX_PIXELS


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
    face: str = "off"  # serve --face: checked against the checkpoint (see service.face)
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


# What the face step did with an inline image (``bool | None``, see service.images.Embedded),
# by the names of imgsim.v1.FaceOutcome: the HTTP API's strings and the gRPC enum's values
FACE_OUTCOMES = {None: "FACE_OUTCOME_UNSPECIFIED", True: "FACE_OUTCOME_FOUND",
                 False: "FACE_OUTCOME_NOT_FOUND"}


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
    # what the face step did with each inline image (see service.images.Embedded): None
    # without a face step or for a catalogued image, True found, False no face (fallback)
    face_a: bool | None = None
    face_b: bool | None = None


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
    query_face: bool | None = None  # the face step on the query image, as VerifyResult.face_a


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
class ServedVersion:
    """What serves a collection now, whatever holds it (a FAISS version, a store's alias)."""

    version: str
    factory: str
    dimension: int
    count: int
    recall_at_10: float | None
    checkpoint_sha256: str
    created_at: str
    search_params: dict
    location: str = ""


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
