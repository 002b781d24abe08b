"""The catalogue: collections, images, models and index versions (SQLAlchemy 2.0; SQLite or PostgreSQL).

The schema is owned by the system database's migrations (``imgsim/db``); :func:`open_catalog` brings a
database to the latest revision. Repository functions take a ``Session``; the caller owns the
transaction (``with Session.begin() as s:``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    case,
    create_engine,
    event,
    func,
    literal,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from imgsim.db.schema import CATALOG_TABLES, Base  # noqa: F401  (the tables below are declared on it)

DEFAULT_COLLECTION = "default"
STORAGES = ("file", "blob")  # image bytes: a file the catalogue points at, or bytes it stores
INDEX_STATES = ("building", "published", "retired", "failed")


def _now() -> datetime:
    return datetime.now(UTC)


class CollectionRow(Base):
    """A named set of images searched together (one index version serves one collection)."""

    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ImageRow(Base):
    """A catalogued image. Its ``id`` is also its FAISS id.

    ``path`` locates the bytes: a file path when ``storage == "file"``, a path relative to the
    collection's index root when ``storage == "blob"`` (images uploaded to the service, kept
    under the root: see :func:`image_file`). ``sha256`` is the content hash, used to find
    duplicates and to embed identical content once."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("collection", "key", name="uq_images_collection_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collection: Mapped[str] = mapped_column(
        String(128), ForeignKey("collections.name", name="fk_images_collection"),
        default=DEFAULT_COLLECTION, index=True)
    key: Mapped[str] = mapped_column(String(512))
    path: Mapped[str] = mapped_column(String(4096))
    label: Mapped[str] = mapped_column(String(512), default="")
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    storage: Mapped[str] = mapped_column(String(16), default="file")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now,
                                                 onupdate=_now)


class ModelRow(Base):
    """A checkpoint that embedded a collection: its hash, spec, metrics and calibrated threshold."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    path: Mapped[str] = mapped_column(String(4096), default="")
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class IndexVersionRow(Base):
    """A built index version (the directory under ``<index-root>/versions/<name>``)."""

    __tablename__ = "index_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    collection: Mapped[str] = mapped_column(
        String(128), ForeignKey("collections.name", name="fk_index_versions_collection"),
        index=True)
    model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", name="fk_index_versions_model"), nullable=True)
    factory: Mapped[str] = mapped_column(String(256))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    count: Mapped[int] = mapped_column(Integer, default=0)
    recall_at_10: Mapped[float | None] = mapped_column(Float, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="building")
    path: Mapped[str] = mapped_column(String(4096), default="")
    build_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


def make_engine(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # WAL: readers don't block the writer
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    return engine


def open_catalog(url: str) -> sessionmaker[Session]:
    """Connect and migrate the schema to the latest revision (a no-op when it is current)."""
    from imgsim.db.migrate import upgrade_catalog

    engine = make_engine(url)
    upgrade_catalog(engine)
    return sessionmaker(engine, expire_on_commit=False)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_file(path: str, storage: str, index_root: str | os.PathLike) -> str:
    """Where a catalogued image's bytes are: a ``"blob"`` row's path is relative to its
    collection's index root, so the catalogue stays right whatever directory a process runs
    in and wherever the root is mounted; a ``"file"`` row's path is the file's own."""
    return os.path.join(os.path.abspath(index_root), path) if storage == "blob" else path


def image_file_column(index_root: str | os.PathLike):
    """:func:`image_file` as a column expression, for queries that read many rows' files."""
    root = os.path.join(os.path.abspath(index_root), "")
    return case((ImageRow.storage == "blob", literal(root) + ImageRow.path),
                else_=ImageRow.path)


# -- collections ----------------------------------------------------------------------------
def ensure_collection(session: Session, name: str, *, description: str = "") -> CollectionRow:
    """The collection named ``name``, created if missing."""
    if not name or len(name) > 128:
        raise ValueError(f"collection name must be 1-128 characters, got {name!r}")
    row = session.scalars(select(CollectionRow).where(CollectionRow.name == name)).one_or_none()
    if row is None:
        row = CollectionRow(name=name, description=description)
        session.add(row)
        session.flush()
    return row


def collections(session: Session) -> list[CollectionRow]:
    return list(session.scalars(select(CollectionRow).order_by(CollectionRow.name)))


# -- images ---------------------------------------------------------------------------------
def upsert_images(session: Session, rows: Iterable[dict], *,
                  collection: str = DEFAULT_COLLECTION) -> list[ImageRow]:
    """Insert or update images by (collection, key); returns the rows in input order.

    A row dict holds ``key``, ``path``, ``sha256`` and optionally ``label``, ``storage``
    (``"file"``/``"blob"``) and ``meta`` (a JSON object). The collection is created if missing."""
    rows = list(rows)
    for r in rows:
        if r.get("storage", "file") not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {r['storage']!r}")
    ensure_collection(session, collection)
    existing: dict[str, ImageRow] = {}
    keys = [r["key"] for r in rows]
    for i in range(0, len(keys), 10_000):  # bounded IN lists
        existing.update((r.key, r) for r in session.scalars(
            select(ImageRow).where(ImageRow.collection == collection,
                                   ImageRow.key.in_(keys[i:i + 10_000]))))
    out = []
    for r in rows:
        row = existing.get(r["key"])
        if row is None:
            row = ImageRow(collection=collection, **r)
            session.add(row)
            existing[r["key"]] = row
        else:
            for k, v in r.items():
                if getattr(row, k) != v:
                    setattr(row, k, v)
        out.append(row)
    session.flush()  # assigns ids
    return out


def images_by_ids(session: Session, ids: Sequence[int]) -> dict[int, ImageRow]:
    ids = [int(i) for i in ids]
    if not ids:
        return {}
    return {r.id: r for r in session.scalars(select(ImageRow).where(ImageRow.id.in_(ids)))}


def image_by_key(session: Session, key: str, *, collection: str = DEFAULT_COLLECTION) -> ImageRow | None:
    return session.scalars(select(ImageRow).where(ImageRow.collection == collection,
                                                  ImageRow.key == key)).one_or_none()


def all_images(session: Session, *, collection: str = DEFAULT_COLLECTION) -> list[ImageRow]:
    return list(session.scalars(select(ImageRow).where(ImageRow.collection == collection)
                                .order_by(ImageRow.id)))


def images_by_sha256(session: Session, sha256: str, *,
                     collection: str | None = DEFAULT_COLLECTION) -> list[ImageRow]:
    """Images with this content (in one collection, or in all when ``collection`` is None)."""
    q = select(ImageRow).where(ImageRow.sha256 == sha256)
    if collection is not None:
        q = q.where(ImageRow.collection == collection)
    return list(session.scalars(q.order_by(ImageRow.id)))


def duplicate_groups(session: Session, *, collection: str = DEFAULT_COLLECTION) -> dict[str, list[str]]:
    """Content hash -> keys, for every content catalogued under more than one key."""
    dup = (select(ImageRow.sha256).where(ImageRow.collection == collection)
           .group_by(ImageRow.sha256).having(func.count() > 1))
    out: dict[str, list[str]] = {}
    for sha, key in session.execute(select(ImageRow.sha256, ImageRow.key).where(
            ImageRow.collection == collection, ImageRow.sha256.in_(dup))
            .order_by(ImageRow.sha256, ImageRow.id)):
        out.setdefault(sha, []).append(key)
    return out


def count_images(session: Session, *, collection: str = DEFAULT_COLLECTION) -> int:
    return int(session.scalar(select(func.count()).select_from(ImageRow)
                              .where(ImageRow.collection == collection)) or 0)


# -- models and index versions ----------------------------------------------------------------
def register_model(session: Session, *, checkpoint_sha256: str, name: str = "", path: str = "",
                   spec: dict | None = None, metrics: dict | None = None,
                   threshold: float | None = None) -> ModelRow:
    """The model row for a checkpoint hash, created (or completed) as needed."""
    row = session.scalars(select(ModelRow).where(
        ModelRow.checkpoint_sha256 == checkpoint_sha256)).one_or_none()
    if row is None:
        row = ModelRow(checkpoint_sha256=checkpoint_sha256)
        session.add(row)
    row.name, row.path = name or row.name, path or row.path
    row.spec, row.metrics = spec or row.spec or {}, metrics or row.metrics or {}
    row.threshold = threshold if threshold is not None else row.threshold
    session.flush()
    return row


def record_index_version(session: Session, *, name: str, collection: str, factory: str,
                         model_id: int | None, params: dict, count: int,
                         recall_at_10: float | None, path: str, build_seconds: float,
                         state: str = "published") -> IndexVersionRow:
    """Insert or update the row of an index version; publishing one retires the collection's
    previously published version."""
    if state not in INDEX_STATES:
        raise ValueError(f"state must be one of {INDEX_STATES}, got {state!r}")
    ensure_collection(session, collection)
    row = session.scalars(select(IndexVersionRow).where(IndexVersionRow.name == name)).one_or_none()
    if row is None:
        row = IndexVersionRow(name=name, collection=collection, factory=factory)
        session.add(row)
    row.model_id, row.params, row.count = model_id, params, count
    row.recall_at_10, row.path, row.build_seconds, row.state = recall_at_10, path, build_seconds, state
    if state == "published":  # one current version per collection: the others are retired
        for other in session.scalars(select(IndexVersionRow).where(
                IndexVersionRow.collection == collection, IndexVersionRow.state == "published",
                IndexVersionRow.name != name)):
            other.state = "retired"
    session.flush()
    return row


def set_index_version_state(session: Session, name: str, state: str) -> None:
    if state not in INDEX_STATES:
        raise ValueError(f"state must be one of {INDEX_STATES}, got {state!r}")
    row = session.scalars(select(IndexVersionRow).where(IndexVersionRow.name == name)).one_or_none()
    if row is not None:
        row.state = state


def index_versions(session: Session, *, collection: str | None = None) -> list[IndexVersionRow]:
    q = select(IndexVersionRow).order_by(IndexVersionRow.name)
    if collection is not None:
        q = q.where(IndexVersionRow.collection == collection)
    return list(session.scalars(q))
