"""The catalogue: one row per image (SQLAlchemy 2.0; SQLite by default, PostgreSQL for replicas)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, String, UniqueConstraint, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DEFAULT_COLLECTION = "default"


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


class ImageRow(Base):
    """A catalogued image. Its ``id`` is also its FAISS id."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("collection", "key", name="uq_images_collection_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collection: Mapped[str] = mapped_column(String(128), default=DEFAULT_COLLECTION, index=True)
    key: Mapped[str] = mapped_column(String(512))
    path: Mapped[str] = mapped_column(String(4096))
    label: Mapped[str] = mapped_column(String(512), default="")
    sha256: Mapped[str] = mapped_column(String(64), index=True)
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
    """Connect and create the schema if it is missing."""
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def upsert_images(session: Session, rows: Iterable[dict], *,
                  collection: str = DEFAULT_COLLECTION) -> list[ImageRow]:
    """Insert or update images by (collection, key); returns the rows in input order."""
    rows = list(rows)
    existing = {r.key: r for r in session.scalars(
        select(ImageRow).where(ImageRow.collection == collection,
                               ImageRow.key.in_([r["key"] for r in rows])))}
    out = []
    for r in rows:
        row = existing.get(r["key"])
        if row is None:
            row = ImageRow(collection=collection, **r)
            session.add(row)
        else:
            for k, v in r.items():
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
