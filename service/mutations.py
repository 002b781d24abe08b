"""Upsert and Delete: catalogue and live index change together, or not at all.

:class:`Changes` is the part of the core that applies them. Every change is made on a copy of the served index inside one catalogue transaction, published
as a new index version (:func:`indexer.publish.publish_version`, with its catalogue row, so a
restart serves it), committed, and only then swapped in. A failure
anywhere leaves the catalogue, the served index and CURRENT as they were.

Other processes publish into the same index root (``imgsim reindex``, other replicas), so a
change holds the root's publish lock (:func:`indexer.versions.publish_lock`; with PostgreSQL
also :func:`indexer.incremental.lock_collection`, for replicas on several hosts) from reading
CURRENT to publishing, and first serves CURRENT if another process published since. Image
blobs that no row references any more are removed once the change has committed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import delete as sa_delete
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import DEFAULT_COLLECTION, ImageRow, upsert_images
from indexer.faults import AFTER_INDEX_PUBLISH, fault_point
from indexer.incremental import (
    add_to_index,
    clone_version,
    lock_collection,
    publish_changes,
    remove_from_index,
)
from indexer.stores import Items
from indexer.versions import (
    IndexVersion,
    current_version_name,
    load_index_version,
    publish_lock,
    read_manifest,
)
from service.collection_registry import CollectionRegistry, Served
from service.domain import ChangeResult, CoreOptions, UpsertItem
from service.embedding_front import EmbeddingFront
from service.errors import (
    ClientGone,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    ServiceError,
    Unavailable,
)
from service.image_files import ImageFiles
from service.live_index import LiveIndex
from service.store import BlobStore, CatalogEntry, EntryCache, entries_by_keys
from service.validation import check_count, check_key, check_keys, check_label, check_metadata

log = logging.getLogger(__name__)

_EXT = {"JPEG": "jpg", "TIFF": "tif"}
# Longest an Upsert or Delete waits (within its deadline) for another process publishing into
# the same index root, e.g. a reindex catching up and writing its version; then UNAVAILABLE.
PUBLISH_LOCK_SECONDS = 60.0


def _check_item(it: UpsertItem, name: str, *, max_metadata_pairs: int) -> None:
    check_key(it.key, f"{name}: key")
    check_label(it.label, f"{name}: label")
    check_count(len(it.metadata), max_metadata_pairs, "metadata pairs", name)
    check_metadata(it.metadata, f"{name}: metadata")
    if not it.data:
        raise InvalidInput(f"{name}: empty image data")


def _collect(collections: CollectionRegistry, o: CoreOptions,
             items: Iterable[UpsertItem]) -> tuple[LiveIndex, list]:
    batch: list[UpsertItem] = []
    seen: set[str] = set()
    live: LiveIndex | None = None
    total = 0
    for n, it in enumerate(items):
        if n >= o.max_upsert_items:
            raise InvalidInput(f"more than {o.max_upsert_items} images in one Upsert "
                               "stream; split it into several")
        name = f"item {n} (key {it.key[:80]!r})"
        _check_item(it, name, max_metadata_pairs=o.max_metadata_pairs)
        total += len(it.data)
        if total > o.max_upsert_bytes:  # the stream is held in memory until applied
            raise InvalidInput(f"more than {o.max_upsert_bytes} bytes of images in one "
                               "Upsert stream; split it into several")
        if live is None:
            live = collections.live(it.collection)
        elif collections.name(it.collection) != live.collection:
            raise InvalidInput(f"{name}: one Upsert stream writes one collection; this item is "
                               f"for {collections.name(it.collection)!r}, earlier ones for "
                               f"{live.collection!r}")
        if it.key in seen:
            raise InvalidInput(f"{name}: key {it.key!r} appears twice in one Upsert stream")
        seen.add(it.key)
        batch.append(it)
    if live is None:
        raise InvalidInput("empty Upsert stream: send at least one image")
    return live, batch


def _restore(live: LiveIndex, keep: int) -> None:
    """The catalogue rolled back after a new version was published: publish the served one
    again so CURRENT (and a restart) matches the catalogue. Without a catalogue row: the
    catalogue may be what failed, and CURRENT must be put right regardless (the copy serves
    what the collection's recorded version serves)."""
    try:
        publish_changes(live.root, clone_version(live.version), keep=keep)
    except Exception:
        log.exception("index %s: could not restore CURRENT after a failed change", live.collection)


def _lock_timeout(deadline: float | None) -> float:
    if deadline is None:
        return PUBLISH_LOCK_SECONDS
    return max(0.0, min(PUBLISH_LOCK_SECONDS, deadline - time.monotonic()))


def _busy(e: TimeoutError, deadline: float | None) -> ServiceError:
    if deadline is not None and time.monotonic() >= deadline:
        return DeadlineExceeded(f"deadline passed while waiting to publish: {e}")
    return Unavailable(f"{e}; nothing was applied, retry later")


@contextmanager
def _publishing(live: LiveIndex, deadline: float | None) -> Iterator[None]:
    """This server's writers one at a time (``write_lock``), and every process publishing
    into the same index root too (``publish_lock``: reindex, other servers on this host)."""
    with live.write_lock, ExitStack() as stack:
        try:
            stack.enter_context(publish_lock(live.root, timeout=_lock_timeout(deadline)))
        except TimeoutError as e:
            raise _busy(e, deadline) from e
        yield


def _serve_current(s: Session, live: LiveIndex, deadline: float | None) -> None:
    """Inside the change's transaction, under :func:`_publishing`: take the collection's lock
    across hosts, then make sure the change applies to the version CURRENT names. Another
    process (a reindex, another replica) may have published since this server last swapped,
    and changing the stale served version would overwrite, and lose, that version."""
    try:
        lock_collection(s, live.collection, timeout=_lock_timeout(deadline))
    except TimeoutError as e:
        raise _busy(e, deadline) from e
    try:
        name = current_version_name(live.root)
    except FileNotFoundError:
        return
    if name == live.version.manifest.version:
        return
    try:
        live.swap_locked(name)
    except FailedPrecondition as e:
        raise FailedPrecondition(
            f"nothing was applied: collection {live.collection!r} was republished by another "
            f"process as index version {name}, which this server cannot serve ({e}); if the "
            "index was rebuilt with another model, restart this server with that checkpoint"
        ) from e
    log.info("index %s: caught up with %s, published by another process, before changing it",
             live.collection, name, extra={"collection": live.collection, "index_version": name})


def _drop_blobs(sessions: sessionmaker[Session], live: LiveIndex, blobs: BlobStore,
                paths: Iterable[Path]) -> None:
    """After the commit (still under the locks): remove the blobs no catalogue row references
    any more. A crash before this leaves orphans for `imgsim blobs gc`, never a lost blob."""
    paths = [p for p in paths if p]
    if not paths:
        return
    try:
        with sessions() as s:
            removed = blobs.remove_unreferenced(s, paths, index_root=live.root)
        if removed:
            log.debug("removed %d unreferenced blob(s) under %s", len(removed), blobs.root)
    except Exception:  # the change is committed; an orphan blob costs only disk
        log.exception("could not remove unreferenced blobs under %s (`imgsim blobs gc` will)",
                      blobs.root)


@dataclass
class _Pending:
    """What a change's plan (run inside its catalogue transaction) leaves to publish: for a
    FAISS collection the changed copy of the served version, for a store collection the
    vectors to write and ids to delete, and what undoes them; ``after_commit`` runs under the
    locks once the change is committed and served."""

    session: Session
    version: IndexVersion | None = None  # FAISS
    upserted: dict[int, str] = field(default_factory=dict)
    deleted: list[int] = field(default_factory=list)
    add: Items | None = None  # store
    undo_add: Items | None = None  # the previous vectors of updated ids
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    @property
    def staged(self) -> bool:
        return self.version is not None or self.add is not None or bool(self.deleted)


class Changes:
    """Upsert and Delete on the served collections (one job: change catalogue, index and
    CURRENT, or the vector store, together), built from the core's parts."""

    def __init__(self, *, collections: CollectionRegistry, front: EmbeddingFront,
                 files: ImageFiles, sessions: sessionmaker[Session], entries: EntryCache,
                 options: CoreOptions) -> None:
        self._collections, self._front, self._files = collections, front, files
        self._sessions, self._entries, self._options = sessions, entries, options

    @contextmanager
    def _change(self, live: Served, deadline: float | None) -> Iterator[_Pending]:
        """The one publish sequence of Upsert and Delete. The body plans the change in the
        catalogue transaction and stages it on the :class:`_Pending` (or stages nothing:
        nothing to do). Then, still in the transaction: the change is recorded, published
        (a new index version; a store's writes), the fault point passed, the transaction
        committed; a failure anywhere after the publish restores the parent (the served
        version again; the store's previous rows). Then the change is served and the catalogue
        cache cleared."""
        published = False
        pending: _Pending | None = None
        with _publishing(live, deadline):
            try:
                with self._sessions.begin() as s:
                    if live.pushes_filters:
                        _lock(s, live, deadline)
                    else:
                        _serve_current(s, live, deadline)
                    pending = _Pending(s)
                    yield pending
                    if not pending.staged:
                        return
                    if live.pushes_filters:
                        published = True  # a write may land even if it raises
                        _write_store(live, pending)
                    else:
                        _record_change(pending.version, upserted=pending.upserted,
                                       deleted=pending.deleted)
                        publish_changes(live.root, pending.version,
                                        keep=self._options.keep_versions, session=s)
                        published = True
                    fault_point(AFTER_INDEX_PUBLISH)  # crash tests: published, not committed
            except BaseException:
                if published:
                    if live.pushes_filters:
                        _undo_store(live, pending)
                    else:
                        _restore(live, self._options.keep_versions)
                raise
            if pending is None or not pending.staged:
                return
            if pending.version is not None:
                live.replace(pending.version)
            self._entries.clear()
            for hook in pending.after_commit:
                hook()

    def upsert(self, items: Iterable[UpsertItem], *, deadline: float | None = None,
               abandoned: Callable[[], bool] | None = None) -> ChangeResult:
        """``abandoned()`` true: the caller has ended the call, so the change is not applied.
        gRPC ends a request stream the same way when the client half-closes it and when it refuses
        an oversized message (which the client reads as RESOURCE_EXHAUSTED); only the second ends
        the call, moments later, so it is asked again just before the change is published."""
        live, batch = _collect(self._collections, self._options, items)
        names = [f"item {n} (key {it.key!r})" for n, it in enumerate(batch)]
        # decode and embed everything before touching anything: one bad image fails the stream
        vectors = self._front.embed_bytes([it.data for it in batch], deadline=deadline,
                                          names=names)
        blobs = self._files.blobs(live)
        written: list[Path] = []
        changed: list[int] = []
        inserted = 0
        try:
            with self._change(live, deadline) as change:
                s = change.session
                existing, changed, rows, replaced = _plan_upsert(s, live, batch, blobs, written)
                inserted = sum(batch[n].key not in existing for n in changed)
                if not changed:
                    return ChangeResult(live.version_name, live.count(), unchanged=len(batch))
                if abandoned is not None and abandoned():
                    raise ClientGone("the call ended before the change was applied")
                if live.pushes_filters:
                    _stage_store_upsert(change, live, rows, vectors[changed])
                else:
                    change.version = clone_version(live.version)
                    try:
                        ids = add_to_index(s, change.version, rows, vectors[changed],
                                           collection=live.collection)
                    except (TypeError, ValueError) as e:
                        raise FailedPrecondition(f"cannot change this index: {e}") from e
                    change.upserted = dict(zip(ids, [r["sha256"] for r in rows], strict=True))
                change.after_commit.append(lambda: written.clear())  # referenced now
                change.after_commit.append(
                    lambda: _drop_blobs(self._sessions, live, blobs, replaced))
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
        version = live.version_name
        log.info("upsert into %s: %d inserted, %d updated, %d unchanged -> %s", live.collection,
                 inserted, len(changed) - inserted, len(batch) - len(changed), version,
                 extra={"collection": live.collection, "index_version": version})
        return ChangeResult(version, live.count(), inserted=inserted,
                            updated=len(changed) - inserted, unchanged=len(batch) - len(changed))

    def delete(self, keys: Sequence[str], *, collection: str = "",
               ignore_missing: bool = False, deadline: float | None = None) -> ChangeResult:
        keys = list(dict.fromkeys(keys))
        if not keys:
            raise InvalidInput("no keys to delete")
        if len(keys) > self._options.max_upsert_items:
            raise InvalidInput(f"{len(keys)} keys in one Delete; the limit is "
                               f"{self._options.max_upsert_items}")
        check_keys(keys)
        live = self._collections.live(collection)
        n = 0
        with self._change(live, deadline) as change:
            s = change.session
            found = entries_by_keys(s, keys, collection=live.collection)
            missing = tuple(k for k in keys if k not in found)
            if missing and not ignore_missing:
                raise NotFound(f"{len(missing)} of {len(keys)} keys are not in collection "
                               f"{live.collection!r} (nothing deleted): "
                               f"{', '.join(map(repr, missing[:5]))}"
                               f"{' ...' if len(missing) > 5 else ''}")
            if not found:
                return ChangeResult(live.version_name, live.count(), missing=missing)
            if live.pushes_filters:
                n = _stage_store_delete(change, live, list(found.values()))
            else:
                change.version = clone_version(live.version)
                try:
                    n = remove_from_index(s, change.version, list(found),
                                          collection=live.collection)
                except (TypeError, ValueError) as e:
                    raise FailedPrecondition(f"cannot change this index: {e}") from e
                change.deleted = [e.id for e in found.values()]
            change.after_commit.append(lambda: _drop_blobs(
                self._sessions, live, self._files.blobs(live),
                [e.file(live.root) for e in found.values()]))
        version = live.version_name
        log.info("delete from %s: %d removed -> %s", live.collection, n, version,
                 extra={"collection": live.collection, "index_version": version})
        return ChangeResult(version, live.count(), deleted=n, missing=missing)


def _plan_upsert(s: Session, live: Served, batch: Sequence[UpsertItem], blobs: BlobStore,
                 written: list[Path]) -> tuple[dict, list[int], list[dict], list[Path]]:
    """Which items change something (a new key, other bytes, label or metadata, or a row
    missing from the index), with their catalogue rows; their images stored as blobs (new
    files appended to ``written``). Returns (existing entries by key, changed item numbers,
    their rows, files the change stops referencing)."""
    existing = entries_by_keys(s, [it.key for it in batch], collection=live.collection)
    ids = np.array([e.id for e in existing.values()], np.int64)
    _, present = live.reconstruct(ids)
    indexed = {int(i) for i, p in zip(ids, present, strict=True) if p}
    changed, rows, replaced = [], [], []
    for n, it in enumerate(batch):
        e = existing.get(it.key)
        sha = _sha(it.data)
        if (e is not None and e.id in indexed and e.sha256 == sha
                and e.label == it.label and e.metadata == dict(it.metadata)):
            continue
        fmt = Image.open(io.BytesIO(it.data)).format or "img"
        path, sha, new = blobs.put(it.data, ext=_EXT.get(fmt, fmt.lower()))
        if new:
            written.append(path)
        where, storage = blobs.location(path, index_root=live.root)
        if e is not None and (e.path, e.storage) != (where, storage):
            replaced.append(e.file(live.root))
        changed.append(n)
        rows.append({"key": it.key, "path": where, "storage": storage, "label": it.label,
                     "sha256": sha, "meta": dict(it.metadata)})
    return existing, changed, rows, replaced


# -- a collection served from a vector store (Milvus): the store is written, not a version --

def _lock(s: Session, live: Served, deadline: float | None) -> None:
    """The collection's lock across hosts (PostgreSQL): replicas' writers take turns."""
    try:
        lock_collection(s, live.collection, timeout=_lock_timeout(deadline))
    except TimeoutError as e:
        raise _busy(e, deadline) from e


def _stage_store_upsert(change: _Pending, live: Served, rows: list[dict],
                        vectors: np.ndarray) -> None:
    """Catalogue rows upserted in the change's transaction (ids assigned); the store's rows of
    updated ids kept, so that a failed commit can put them back."""
    images = upsert_images(change.session, rows, collection=live.collection)
    ids = np.array([im.id for im in images], np.int64)
    change.add = Items(ids, vectors, [r["label"] for r in rows], [r["meta"] for r in rows],
                       [r["sha256"] for r in rows])
    change.upserted = {int(i): r["sha256"] for i, r in zip(ids, rows, strict=True)}
    change.undo_add = _stored_rows(live, ids.tolist())


def _stored_rows(live: Served, ids: list[int]) -> Items | None:
    """The store's rows of ``ids`` as they are (vector, label, metadata, content), to put back
    if the change's commit fails; None when none is stored."""
    before = live.store.stored_attributes(live.collection, ids)
    if not before:
        return None
    kept = np.array(sorted(before), np.int64)
    vecs, _ = live.reconstruct(kept)
    label, meta, content = zip(*(before[int(i)] for i in kept), strict=True)
    return Items(kept, vecs, label, meta, content)


def _stage_store_delete(change: _Pending, live: Served, found: list[CatalogEntry]) -> int:
    ids = [e.id for e in found]
    change.session.execute(sa_delete(ImageRow).where(ImageRow.id.in_(ids)))
    change.undo_add = _stored_rows(live, ids)
    change.deleted = ids
    return len(ids)


def _write_store(live: Served, change: _Pending) -> None:
    try:
        if change.deleted:
            live.store.remove(live.collection, change.deleted)
        if change.add is not None:
            live.store.add(live.collection, change.add)
    except ServiceError:
        raise
    except Exception as e:  # the store's own errors: nothing committed, try again
        raise Unavailable(f"vector store {live.store.backend}: {e}; nothing was applied, "
                          "retry later") from e


def _undo_store(live: Served, change: _Pending | None) -> None:
    """The catalogue rolled back after the store was written: put the store's previous rows
    back (new ids removed, updated and deleted ones rewritten). A crash before this leaves
    drift that `imgsim store check --repair` reports and repairs."""
    if change is None:
        return
    try:
        if change.add is not None:
            previous = set(change.undo_add.ids.tolist()) if change.undo_add is not None else set()
            new = [int(i) for i in change.add.ids if int(i) not in previous]
            if new:
                live.store.remove(live.collection, new)
        if change.undo_add is not None:
            live.store.add(live.collection, change.undo_add)
    except Exception:
        log.exception("%s: could not undo a failed change in the vector store (`imgsim store "
                      "check --repair` will)", live.collection)


def _record_change(version: IndexVersion, *, upserted: dict[int, str] | None = None,
                   deleted: Sequence[int] = ()) -> None:
    """Write into the manifest what the catalogue will hold once this change commits, so that
    :func:`recover_interrupted_change` can tell whether it did."""
    version.manifest = replace(version.manifest, last_change={
        "upserted": {str(i): sha for i, sha in (upserted or {}).items()},
        "deleted": [int(i) for i in deleted]})


def _committed(sessions: sessionmaker[Session], collection: str, change: dict) -> bool:
    upserted = {int(i): sha for i, sha in change.get("upserted", {}).items()}
    deleted = [int(i) for i in change.get("deleted", [])]
    with sessions() as s:
        now = dict(s.execute(select(ImageRow.id, ImageRow.sha256).where(
            ImageRow.collection == collection,
            ImageRow.id.in_([*upserted, *deleted]))).all())
    return (all(now.get(i) == sha for i, sha in upserted.items())
            and not any(i in now for i in deleted))


def recover_interrupted_change(root: str | Path, sessions: sessionmaker[Session], *,
                               keep: int = 5) -> str | None:
    """Before serving ``root``: if CURRENT was published by an Upsert or Delete whose catalogue
    transaction never committed (the process died between the publish and the commit), publish
    its parent version again, so that the index agrees with the catalogue (the change is lost
    whole, as its client was never told it succeeded). Returns the version published, if any.

    Only CURRENT can be such a version: every writer publishes under the root's lock and a
    change's transaction ends before the lock is released, unless its process died."""
    with publish_lock(root):
        try:
            m = read_manifest(root)
        except FileNotFoundError:
            return None
        collection = m.collection or DEFAULT_COLLECTION
        if not m.last_change or _committed(sessions, collection, m.last_change):
            return None
        try:
            parent = load_index_version(root, m.parent_version)
        except (OSError, ValueError, RuntimeError) as e:
            raise RuntimeError(
                f"index version {m.version} of {collection!r} holds a change its catalogue never "
                f"committed, and its parent {m.parent_version!r} cannot be loaded ({e}); "
                "rebuild the collection with `imgsim reindex` (same checkpoint)") from e
        with sessions.begin() as s:
            lock_collection(s, collection)
            path = publish_changes(root, clone_version(parent), keep=keep, session=s)
    log.warning("index %s: version %s held a change whose catalogue transaction never committed "
                "(a crash between publish and commit); republished its parent %s as %s",
                collection, m.version, m.parent_version, path.name,
                extra={"collection": collection, "index_version": path.name})
    return path.name


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
