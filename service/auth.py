"""API keys: stored hashed in the catalogue, scoped to collections and to read or write access.

A key reads ``isk_<id>_<secret>``. Only the id and the SHA-256 of the secret are stored; the
secret is 256 random bits, so a fast hash is enough (a slow password hash protects guessable
secrets, and these are not guessable). Clients send it as ``authorization: Bearer <key>`` or
``x-api-key: <key>`` request metadata.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from imgsim.db.schema import Base
from service.errors import PermissionDenied, Unauthenticated
from service.validation import check_collection

ACCESS = ("read", "write")  # write includes read
ALL_COLLECTIONS = "*"
PREFIX = "isk"


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256), default="")
    access: Mapped[str] = mapped_column(String(8))
    collections: Mapped[str] = mapped_column(String(4096))  # comma-separated, or "*"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                 default=lambda: datetime.now(UTC))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's id, name, access level and collections (None: all)."""

    key_id: str
    name: str
    access: str
    collections: frozenset[str] | None

    def require(self, access: str, collections: Iterable[str]) -> None:
        if access == "write" and self.access != "write":
            raise PermissionDenied(f"API key {self.key_id} is read-only")
        if self.collections is None:
            return
        names = set(collections)
        for name in names:  # before the error below quotes them
            check_collection(name)
        outside = sorted(names - self.collections)
        if outside:
            raise PermissionDenied(f"API key {self.key_id} has no access to collection(s) "
                                   f"{', '.join(map(repr, outside))}")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(key: str) -> tuple[str, str]:
    parts = key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise Unauthenticated("malformed API key (expected isk_<id>_<secret>)")
    return parts[1], parts[2]


def create_api_key(session: Session, *, name: str, access: str,
                   collections: Sequence[str]) -> tuple[str, ApiKeyRow]:
    """A new key; the returned plain key is shown once and never stored."""
    if access not in ACCESS:
        raise ValueError(f"access must be one of {', '.join(ACCESS)}, got {access!r}")
    cols = sorted({c.strip() for c in collections if c.strip()})
    if not cols:
        raise ValueError("give at least one collection (or '*' for all)")
    if ALL_COLLECTIONS in cols and len(cols) > 1:
        raise ValueError("'*' means every collection; do not list others with it")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    row = ApiKeyRow(key_id=key_id, secret_sha256=_hash(secret), name=name, access=access,
                    collections=",".join(cols))
    session.add(row)
    session.flush()
    return f"{PREFIX}_{key_id}_{secret}", row


def list_api_keys(session: Session) -> list[ApiKeyRow]:
    return list(session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id)))


def revoke_api_key(session: Session, key_id: str) -> ApiKeyRow:
    row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.key_id == key_id)).one_or_none()
    if row is None:
        raise ValueError(f"no API key with id {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    return row


def principal_of(row: ApiKeyRow) -> Principal:
    cols = None if row.collections == ALL_COLLECTIONS else frozenset(row.collections.split(","))
    return Principal(row.key_id, row.name, row.access, cols)


def key_from_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for k, v in metadata:
        v = v.decode() if isinstance(v, bytes) else v
        if k == "x-api-key":
            return v
        if k == "authorization" and v.lower().startswith("bearer "):
            return v[7:]
    return None


class Authenticator:
    """Checks keys against the catalogue; answers are cached for ``cache_seconds`` (so a
    revocation takes effect within that time on a running server)."""

    def __init__(self, sessions: sessionmaker[Session], *, cache_seconds: float = 5.0) -> None:
        self.sessions = sessions
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>' or "
                                  "'x-api-key: <key>' metadata")
        key_id, secret = _split(key)
        digest = _hash(secret)
        cache_key = f"{key_id}:{digest}"
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > now:
            principal = hit[1]
        else:
            principal = self._lookup(key_id, digest)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[cache_key] = (now + self.cache_seconds, principal)
        if principal is None:
            raise Unauthenticated("unknown or revoked API key")
        return principal

    def _lookup(self, key_id: str, digest: str) -> Principal | None:
        with self.sessions() as s:
            row = s.scalars(select(ApiKeyRow).where(ApiKeyRow.key_id == key_id)).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_sha256, digest):
            return None
        return principal_of(row)
