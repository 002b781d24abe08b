"""Catalogue browsing: collections, a collection's images page by page, one image's record,
thumbnail and bytes. Plain Python over a :class:`SimilarityCore`, used by gRPC and HTTP alike."""

from __future__ import annotations

import io
import mimetypes
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from PIL import Image
from sqlalchemy import and_, func, select

from indexer.catalog import CollectionRow, ImageRow
from service.core import SimilarityCore
from service.errors import InvalidInput, NotFound
from service.store import entries_by_keys
from service.validation import check_count, check_key, check_label, check_metadata, check_text

MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_THUMBNAIL = 512
DEFAULT_THUMBNAIL = 128


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    count: int               # catalogued images
    served: bool             # this server answers searches on it
    index_version: str = ""  # the version served ("" when not served)
    indexed: int = 0         # vectors in the served version
    description: str = ""


@dataclass(frozen=True)
class ImageRecord:
    id: int
    key: str
    label: str
    collection: str
    sha256: str
    storage: str
    media_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""


@dataclass(frozen=True)
class ImagePage:
    images: list[ImageRecord]
    total: int               # images matching the filters
    offset: int
    next_offset: int | None  # None on the last page


def _iso(t: datetime | None) -> str:
    if t is None:
        return ""
    return (t.replace(tzinfo=UTC) if t.tzinfo is None else t).isoformat()


def _meta(raw: Mapping | None) -> dict[str, str]:
    import json

    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (raw or {}).items()}


def _record(r: ImageRow) -> ImageRecord:
    media = mimetypes.guess_type(r.path)[0] or "application/octet-stream"
    return ImageRecord(r.id, r.key, r.label, r.collection, r.sha256, r.storage, media,
                       _meta(r.meta), _iso(r.created_at), _iso(r.updated_at))


class Catalogue:
    """Read-only views of the catalogue a core serves. Thumbnails are kept in a small LRU by
    content hash and size: a gallery page asks for the same ones again and again."""

    def __init__(self, core: SimilarityCore, *, thumbnail_cache: int = 2048) -> None:
        self.core = core
        self._thumbs: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._cache_size = thumbnail_cache
        self._lock = threading.Lock()

    def collections(self) -> list[CollectionInfo]:
        """Every collection of the catalogue with its image count; served ones first."""
        core = self.core
        with core.sessions() as s:
            counts = dict(s.execute(select(ImageRow.collection, func.count(ImageRow.id))
                                    .group_by(ImageRow.collection)).all())
            described = dict(s.execute(select(CollectionRow.name, CollectionRow.description))
                             .all())
        names = list(core.collections) + sorted((set(counts) | set(described))
                                                - set(core.collections))
        out = []
        for name in names:
            live = core.lives.get(name)
            out.append(CollectionInfo(
                name, int(counts.get(name, 0)), live is not None,
                live.version_name if live is not None else "",
                live.count() if live is not None else 0,
                described.get(name) or ""))
        return out

    def _collection(self, collection: str) -> str:
        return self.core.collection_name(collection)

    def images(self, collection: str = "", *, offset: int = 0, limit: int = DEFAULT_PAGE,
               labels: Sequence[str] = (), metadata: Mapping[str, str] | None = None,
               key_prefix: str = "") -> ImagePage:
        """One page of a collection's images in catalogue order (by id), filtered by label
        (any of ``labels``), metadata equality (every pair) and key prefix."""
        name = self._collection(collection)
        limit = limit or DEFAULT_PAGE
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        if offset < 0:
            raise InvalidInput(f"offset must be >= 0, got {offset}")
        o = self.core.options
        metadata = dict(metadata or {})
        check_count(len(labels), o.max_filter_labels, "labels")
        check_count(len(metadata), o.max_metadata_pairs, "metadata filters")
        for label in labels:
            check_label(label, f"label {label[:40]!r}")
        check_metadata(metadata)
        check_text(key_prefix, "key prefix", max_chars=512, allow_empty=True)
        cond = [ImageRow.collection == name]
        if labels:
            cond.append(ImageRow.label.in_(list(labels)))
        cond += [ImageRow.meta[k].as_string() == v for k, v in metadata.items()]
        if key_prefix:
            cond.append(ImageRow.key.startswith(key_prefix, autoescape=True))
        where = and_(*cond)
        with self.core.sessions() as s:
            if name not in self.core.lives and not s.scalar(
                    select(func.count(CollectionRow.id)).where(CollectionRow.name == name)):
                raise NotFound(f"no collection {name!r} in the catalogue")
            total = int(s.scalar(select(func.count(ImageRow.id)).where(where)) or 0)
            rows = list(s.scalars(select(ImageRow).where(where).order_by(ImageRow.id)
                                  .offset(offset).limit(limit)))
        nxt = offset + len(rows)
        return ImagePage([_record(r) for r in rows], total, offset,
                         nxt if nxt < total else None)

    def _row(self, collection: str, key: str) -> ImageRow:
        name = self._collection(collection)
        check_key(key)
        with self.core.sessions() as s:
            row = s.scalars(select(ImageRow).where(ImageRow.collection == name,
                                                   ImageRow.key == key)).one_or_none()
        if row is None:
            raise NotFound(f"no image with key {key!r} in collection {name!r}")
        return row

    def image(self, collection: str, key: str) -> ImageRecord:
        return _record(self._row(collection, key))

    def image_bytes(self, collection: str, key: str) -> tuple[bytes, str]:
        """(encoded bytes, media type) of a catalogued image, read where the core reads it."""
        name = self._collection(collection)
        check_key(key)
        with self.core.sessions() as s:
            entry = entries_by_keys(s, [key], collection=name).get(key)
        if entry is None:
            raise NotFound(f"no image with key {key!r} in collection {name!r}")
        data = self.core.image_bytes(self.core.lives.get(name), entry, f"image {key!r}")
        return data, mimetypes.guess_type(entry.path)[0] or "application/octet-stream"

    def thumbnail(self, collection: str, key: str, size: int = DEFAULT_THUMBNAIL) -> bytes:
        """A PNG at most ``size`` pixels on its longer side (the image is never enlarged)."""
        if not 8 <= size <= MAX_THUMBNAIL:
            raise InvalidInput(f"thumbnail size must be between 8 and {MAX_THUMBNAIL}, got {size}")
        row = self._row(collection, key)
        with self._lock:
            hit = self._thumbs.get((row.sha256, size))
            if hit is not None:
                self._thumbs.move_to_end((row.sha256, size))
                return hit
        data, _ = self.image_bytes(collection, key)
        png = thumbnail_png(self.core.pipeline.decode(data), size)
        with self._lock:
            self._thumbs[(row.sha256, size)] = png
            while len(self._thumbs) > self._cache_size:
                self._thumbs.popitem(last=False)
        return png


def thumbnail_png(img: Image.Image, size: int) -> bytes:
    img = img.convert("RGB") if img.mode not in ("RGB", "L") else img
    img = img.copy()
    img.thumbnail((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
