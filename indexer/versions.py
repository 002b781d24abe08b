"""Index versions on disk: <root>/versions/<version>/{index.faiss,manifest.json} and a CURRENT pointer.

Publishing is atomic: the version directory is written under a temporary name and renamed,
then CURRENT is replaced with os.replace, so a reader never sees a half-written version.

Several processes publish into one root (``imgsim reindex``, every server applying Upsert and
Delete). A publish that derives from what it read (a catch-up with the catalogue, a change
applied to the served version) must hold :func:`publish_lock` from that read to the publish,
or it overwrites, and loses, another writer's version. ``publish_lock`` is an ``flock`` on
``<root>/.publish.lock``: it serialises the processes of one host. Replicas on several hosts
sharing one index root (a network file system, where flock may not be honoured) need a lock
they all see: with a PostgreSQL catalogue, :func:`indexer.incremental.lock_collection` takes an
advisory lock in the writer's catalogue transaction (SQLite catalogues are one host's file).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import faiss

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
LOCK_FILE = ".publish.lock"


@dataclass(frozen=True)
class Manifest:
    version: str
    factory: str
    metric: str  # "l2": FAISS returns squared L2 distances
    dimension: int
    count: int
    checkpoint_sha256: str
    model_version: str
    threshold: float | None
    collection: str
    recall_at_10: float | None = None  # measured against exact search; 1.0 for exact indexes
    search_params: dict = field(default_factory=dict)
    build_seconds: float = 0.0
    created_at: str = ""
    # incremental changes since the last full build (indexer.incremental)
    parent_version: str = ""  # the version this one was derived from ("" for a full build)
    count_at_build: int = 0  # vectors in the last full build
    added_since_build: int = 0
    removed_since_build: int = 0
    tombstones: int = 0  # removed entries still stored (indexes without remove_ids, e.g. HNSW)
    # how the index was chosen and tuned
    requested_factory: str = ""  # what was asked for ("auto" or a factory string)
    target_recall: float | None = None  # recall@10 the search parameters were tuned to
    tuning_queries: int = 0  # held-out queries the recall was measured on
    build_params: dict = field(default_factory=dict)  # train size, memory budget, candidates
    # the Upsert/Delete that made this version, {"upserted": {id: sha256}, "deleted": [id]}:
    # at start a server checks that its catalogue transaction committed (service.mutations)
    last_change: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class IndexVersion:
    path: Path
    manifest: Manifest
    index: faiss.Index

    def __post_init__(self) -> None:
        # searchers trust manifest.dimension for the index's (a cheaper read than index.d)
        if self.index.d != self.manifest.dimension:
            raise ValueError(f"index {self.path}: {self.index.d}-d, its manifest says "
                             f"{self.manifest.dimension}")


def new_version_name() -> str:
    return datetime.now(UTC).strftime("v%Y%m%dT%H%M%S%fZ")


def publish_index_version(root: str | Path, index: faiss.Index, manifest: Manifest, *,
                          keep: int = 5) -> Path:
    """Write a version directory atomically, point CURRENT at it, prune old versions.

    The file-system step of :func:`indexer.publish.publish_version`, which writers call (it also
    sets ``count`` and records the catalogue's row)."""
    root = Path(root)
    versions = root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    if not manifest.created_at:
        manifest = Manifest(**{**asdict(manifest), "created_at": datetime.now(UTC).isoformat()})
    tmp = Path(tempfile.mkdtemp(dir=versions, prefix=".tmp-"))
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        (tmp / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))
        final = versions / manifest.version
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_pointer(root, manifest.version)
    _prune(versions, keep=keep, current=manifest.version)
    return final


def retry_until(attempt: Callable[[], bool], *, timeout: float, poll: float, what: str) -> None:
    """Call ``attempt`` every ``poll`` seconds until it returns True; ``TimeoutError(what)``
    once ``timeout`` seconds have passed (a non-blocking lock taken with a time limit)."""
    give_up = time.monotonic() + max(timeout, 0.0)
    while not attempt():
        if time.monotonic() >= give_up:
            raise TimeoutError(what)
        time.sleep(poll)


_held = threading.local()  # root -> depth of publish_lock held by this thread


@contextmanager
def publish_lock(root: str | Path, *, timeout: float | None = None,
                 poll: float = 0.05) -> Iterator[None]:
    """Hold the exclusive publish lock of an index root (``flock`` on ``<root>/.publish.lock``).

    Blocks until it is free, or raises ``TimeoutError`` after ``timeout`` seconds. Reentrant in
    one thread; other threads and processes wait (each takes its own open file, and flock
    locks of distinct open files exclude each other even within one process). The kernel drops
    the lock when its holder dies, so a killed reindex never leaves a root locked."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = str(root.resolve())
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)

    def try_lock() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            retry_until(try_lock, timeout=timeout, poll=poll,
                        what=f"another process has been publishing into {root} for over "
                             f"{timeout:.0f}s (it holds {LOCK_FILE})")
        depth[key] = 1
        try:
            yield
        finally:
            depth[key] = 0
    finally:
        os.close(fd)  # releases the flock


def _write_pointer(root: Path, version: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".CURRENT.")
    with os.fdopen(fd, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / CURRENT_FILE)


def _prune(versions: Path, *, keep: int, current: str) -> None:
    names = sorted(p.name for p in versions.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in names[:-keep] if keep > 0 else []:
        if name != current:
            shutil.rmtree(versions / name, ignore_errors=True)


def current_version_name(root: str | Path) -> str:
    pointer = Path(root) / CURRENT_FILE
    if not pointer.is_file():
        raise FileNotFoundError(f"no published index under {root} (missing {CURRENT_FILE})")
    return pointer.read_text().strip()


def read_manifest(root: str | Path, version: str | None = None) -> Manifest:
    """The manifest of ``version`` (default: CURRENT), without loading its index."""
    path = Path(root) / "versions" / (version or current_version_name(root)) / MANIFEST_FILE
    return Manifest.from_dict(json.loads(path.read_text()))


def load_index_version(root: str | Path, version: str | None = None) -> IndexVersion:
    root = Path(root)
    version = version or current_version_name(root)
    path = root / "versions" / version
    manifest = read_manifest(root, version)
    index = faiss.read_index(str(path / INDEX_FILE))
    if index.ntotal != manifest.count or index.d != manifest.dimension:
        raise ValueError(f"index {path} does not match its manifest "
                         f"({index.ntotal}x{index.d} vs {manifest.count}x{manifest.dimension})")
    apply_search_params(index, manifest.search_params)
    return IndexVersion(path, manifest, index)


def apply_search_params(index: faiss.Index, params: dict) -> None:
    """Set tuned search parameters (``{"nprobe": 8}``, ``{"efSearch": 64}``) on a loaded index,
    so that a plain ``index.search`` already runs at the recall the manifest reports."""
    if params:
        spec = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        faiss.ParameterSpace().set_index_parameters(index, spec)
