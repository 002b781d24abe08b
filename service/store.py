"""What the service reads and writes beside the index: catalogue lookups and image blobs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from imgsim.db.schema import SERVICE_TABLES
from indexer.catalog import ImageRow, image_file


def ensure_service_tables(sessions: sessionmaker[Session]) -> None:
    """Check that the catalogue holds the service's own tables (API keys, jobs).

    They are created by the catalogue's migrations (revisions 0003 and 0004), which
    ``indexer.catalog.open_catalog`` runs; a database opened without them is refused with
    the command that upgrades it."""
    missing = sorted(SERVICE_TABLES - set(inspect(sessions.kw["bind"]).get_table_names()))
    if missing:
        raise RuntimeError(f"the catalogue has no {', '.join(missing)} table: upgrade it with "
                           "`imgsim index migrate`")


@dataclass(frozen=True)
class CatalogEntry:
    id: int
    key: str
    label: str
    sha256: str
    path: str
    metadata: dict[str, str]
    storage: str = "file"  # "blob": ``path`` is relative to the collection's index root

    def file(self, index_root: str | Path) -> Path:
        """Where the image's bytes are (see :func:`indexer.catalog.image_file`)."""
        return Path(image_file(self.path, self.storage, index_root))


# plain column rows, not ORM objects: this runs for every search and costs several times less
_ENTRY = select(ImageRow.id, ImageRow.key, ImageRow.label, ImageRow.sha256, ImageRow.path,
                ImageRow.meta, ImageRow.storage)


def entries_by_ids(session: Session, ids: Sequence[int]) -> dict[int, CatalogEntry]:
    ids = [int(i) for i in ids]
    if not ids:
        return {}
    return {r[0]: _entry(r) for r in session.execute(_ENTRY.where(ImageRow.id.in_(ids)))}


def entries_by_keys(session: Session, keys: Sequence[str], *, collection: str) -> dict[str, CatalogEntry]:
    if not keys:
        return {}
    return {r[1]: _entry(r) for r in session.execute(_ENTRY.where(
        ImageRow.collection == collection, ImageRow.key.in_(list(keys))))}


def _entry(r) -> CatalogEntry:
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (r[5] or {}).items()}
    return CatalogEntry(r[0], r[1], r[2], r[3], r[4], meta, r[6])


def ids_by_keys(session: Session, keys: Iterable[str], *, collection: str) -> dict[str, int]:
    keys = list(keys)
    if not keys:
        return {}
    return dict(session.execute(select(ImageRow.key, ImageRow.id).where(
        ImageRow.collection == collection, ImageRow.key.in_(keys))).all())


def matching_ids(session: Session, *, collection: str, labels: Sequence[str] = (),
                 metadata: Mapping[str, str] | None = None) -> list[int]:
    """Ids of the collection's images with one of ``labels`` (if any) and every metadata pair.

    One flat AND of the conditions, labels as one IN list. SQLite's parser still nests each
    AND one level deeper and refuses more than 1000 levels, so the caller caps the pairs a
    query may hold (``CoreOptions.max_metadata_pairs``), far below that on either database."""
    conditions = [ImageRow.collection == collection]
    if labels:
        conditions.append(ImageRow.label.in_(list(labels)))
    # JSON string equality, on SQLite and PostgreSQL alike
    conditions += [ImageRow.meta[name].as_string() == value
                   for name, value in (metadata or {}).items()]
    return list(session.scalars(select(ImageRow.id).where(and_(*conditions))))


def identity_entries(session: Session, label: str, *, collection: str) -> list[tuple[int, str]]:
    """(id, key) of every image enrolled under ``label``."""
    return list(session.execute(select(ImageRow.id, ImageRow.key).where(
        ImageRow.collection == collection, ImageRow.label == label).order_by(ImageRow.id))
        .all())


class EntryCache:
    """Recently read catalogue entries by id, for the search path (hits repeat across queries).

    Entries expire after ``ttl`` seconds, so changes made by other processes show within that
    time; the service's own changes and index swaps clear the cache at once. ttl 0: off."""

    def __init__(self, *, ttl: float = 5.0, max_entries: int = 100_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._data: dict[int, tuple[float, CatalogEntry]] = {}
        self._lock = threading.Lock()
        self._generation = 0  # bumped by clear(): rows read before it are not cached after it

    def get(self, session_factory: sessionmaker[Session], ids: Sequence[int]) -> dict[int, CatalogEntry]:
        ids = list(dict.fromkeys(int(i) for i in ids))
        now, generation = time.monotonic(), self._generation
        out, missing = {}, []
        if self.ttl > 0:
            with self._lock:
                for i in ids:
                    hit = self._data.get(i)
                    if hit is not None and hit[0] > now:
                        out[i] = hit[1]
                    else:
                        missing.append(i)
        else:
            missing = ids
        if missing:
            with session_factory() as s:
                fresh = entries_by_ids(s, missing)
            out.update(fresh)
            if self.ttl > 0:
                with self._lock:
                    if generation != self._generation:
                        return out
                    if len(self._data) + len(fresh) > self.max_entries:
                        self._data.clear()
                    self._data.update((i, (now + self.ttl, e)) for i, e in fresh.items())
        return out

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._generation += 1


class BlobStore:
    """Content-addressed image files (``<root>/<sha[:2]>/<sha>.<ext>``) for images sent inline.

    Identical content is stored once and shared by every row that holds it, so a blob may go
    only when no catalogue row references it: :meth:`remove_unreferenced` after a change
    commits, :func:`sweep_blobs` for orphans a crash left between a commit and that removal.
    Only files of this store are ever removed, never images catalogued from their own paths."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str, ext: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.{ext}"

    def put(self, data: bytes, *, ext: str) -> tuple[Path, str, bool]:
        """Store the bytes (atomically); returns (path, sha256, newly written)."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha, ext)
        if path.is_file():
            return path, sha, False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return path, sha, True

    def location(self, path: Path, *, index_root: str | Path) -> tuple[str, str]:
        """(catalogue path, storage) of a blob of this store: relative to the index root
        (storage ``"blob"``) when the store lies under it, as by default, so that neither
        the server's working directory nor where the root is mounted matters; else the
        absolute path (a ``blob_dir`` elsewhere)."""
        p, root = Path(path).resolve(), Path(index_root).resolve()
        if p.is_relative_to(root):
            return p.relative_to(root).as_posix(), "blob"
        return str(p), "file"

    def sha_of(self, path: str | Path) -> str | None:
        """The content hash of a blob file of this store, None for any other path."""
        p = Path(path).resolve()
        sha = p.name.split(".", 1)[0]
        if (not _SHA256.fullmatch(sha) or p.parent.name != sha[:2]
                or p.parent.parent != self.root.resolve()):
            return None
        return sha

    def files(self) -> Iterator[Path]:
        """Every file under the store's ``<sha[:2]>`` folders (blobs and temporary files)."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if shard.is_dir() and len(shard.name) == 2:
                yield from sorted(p for p in shard.iterdir() if p.is_file())

    def unreferenced(self, session: Session, paths: Iterable[str | Path], *,
                     index_root: str | Path) -> list[Path]:
        """Those of ``paths`` that are blobs of this store no catalogue row (of any collection)
        references; paths outside the store are never returned. Rows' paths relative to an
        index root (storage ``"blob"``) are read against ``index_root``."""
        by_sha: dict[str, set[Path]] = {}
        for p in paths:
            sha = self.sha_of(p)
            if sha is not None:
                by_sha.setdefault(sha, set()).add(Path(p).resolve())
        shas = sorted(by_sha)
        referenced: set[Path] = set()
        # uploads recorded before blob rows were relative to the index root hold a path
        # relative to that server's working directory: unresolvable, so their name counts
        legacy: set[str] = set()
        for i in range(0, len(shas), 500):
            for p, st in session.execute(select(ImageRow.path, ImageRow.storage)
                                         .where(ImageRow.sha256.in_(shas[i:i + 500]))):
                referenced.add(Path(image_file(p, st, index_root)).resolve())
                if st == "file" and not os.path.isabs(p):
                    legacy.add(Path(p).name)
        return sorted(p for ps in by_sha.values() for p in ps
                      if p not in referenced and p.name not in legacy)

    def remove_unreferenced(self, session: Session, paths: Iterable[str | Path], *,
                            index_root: str | Path) -> list[Path]:
        """Delete those of ``paths`` no row references. Call it only after the transaction
        that dropped their rows committed (a rollback must find its blobs), and under the
        index root's publish lock (an Upsert may be about to reference one again)."""
        gone = self.unreferenced(session, paths, index_root=index_root)
        for p in gone:
            p.unlink(missing_ok=True)
        return gone


TMP_PREFIX = ".blob-"
_SHA256 = re.compile(r"[0-9a-f]{64}")
DEFAULT_GC_MIN_AGE = 300.0


def sweep_blobs(sessions: sessionmaker[Session], blobs: BlobStore, *, index_root: str | Path,
                collection: str, min_age_seconds: float = DEFAULT_GC_MIN_AGE,
                dry_run: bool = False) -> list[Path]:
    """Remove orphans: blobs no catalogue row references, and temporary files of interrupted
    writes, older than ``min_age_seconds``. Holds the index root's publish lock (and, with
    PostgreSQL, the collection's advisory lock), which every Upsert holds while it writes a
    blob and commits the row referencing it. Returns what was (``dry_run``: would be) removed."""
    # here, not at the top: they import faiss, which `imgsim keys` (ensure_service_tables) needs not
    from indexer.incremental import lock_collection
    from indexer.versions import publish_lock

    cutoff = time.time() - min_age_seconds
    with publish_lock(index_root), sessions.begin() as s:
        lock_collection(s, collection)
        old = [p for p in blobs.files() if p.stat().st_mtime <= cutoff]
        temporary = [p for p in old if p.name.startswith(TMP_PREFIX)]
        orphans = sorted(temporary + blobs.unreferenced(s, old, index_root=index_root))
        if not dry_run:
            for p in orphans:
                p.unlink(missing_ok=True)
    return orphans


def blob_root(index_root: str | Path, collection: str, blob_dir: str = "") -> Path:
    """Where a collection's inline images are kept: ``<blob_dir>/<collection>`` when a blob
    dir is configured, else ``<index root>/blobs`` (the server and `imgsim blobs gc` both ask here)."""
    return Path(blob_dir) / collection if blob_dir else Path(index_root) / "blobs"
