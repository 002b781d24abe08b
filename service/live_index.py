"""One collection's served index version: batched searches, atomic hot swaps, a CURRENT watcher.

How a batch is searched is :mod:`indexer.search`'s (the one search path); this file owns which
version serves it.

Readers never lock: a search takes the current ``IndexVersion`` reference and finishes on it,
even if a swap or an Upsert replaces it meanwhile (changes are made on a copy and swapped in,
so no search ever sees half of one). Writers (swaps, Upsert, Delete) hold ``write_lock``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from indexer.catalog import DEFAULT_COLLECTION
from indexer.search import SearchAnswer, SearchJob, reconstruct, search_batch
from indexer.versions import IndexVersion, current_version_name, load_index_version
from service.batching import BatchObserver, MicroBatcher
from service.domain import ServedVersion
from service.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

# (collection, outcome "swapped" | "refused" | "failed", version)
SwapObserver = Callable[[str, str, str], None]


def check_version(version: IndexVersion, *, checkpoint_sha256: str, dim: int) -> IndexVersion:
    """Refuse an index built with another model (its vectors would be meaningless)."""
    m = version.manifest
    if m.checkpoint_sha256 != checkpoint_sha256:
        raise FailedPrecondition(
            f"index version {m.version} was built with checkpoint {m.checkpoint_sha256[:12]}, "
            f"but the service runs {checkpoint_sha256[:12]}")
    if m.dimension != dim:
        raise FailedPrecondition(f"index dimension {m.dimension} != model's {dim}")
    return version


def index_root_of(version: IndexVersion) -> Path:
    """``<root>/versions/<name>`` -> ``<root>``."""
    return Path(version.path).parent.parent


class LiveIndex:
    pushes_filters = False  # filters become catalogue ids, searched by indexer.search

    def __init__(self, version: IndexVersion, *, checkpoint_sha256: str, dim: int,
                 max_batch: int = 64, max_wait_ms: float = 0.0, max_queue: int = 4096,
                 observer: BatchObserver | None = None,
                 on_swap: SwapObserver | None = None) -> None:
        self.checkpoint_sha256, self.dim = checkpoint_sha256, dim
        self._version = check_version(version, checkpoint_sha256=checkpoint_sha256, dim=dim)
        self.root = index_root_of(version)
        self.collection = version.manifest.collection or DEFAULT_COLLECTION
        self.write_lock = threading.Lock()
        self._on_swap = on_swap
        self._refused: str | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.batcher: MicroBatcher[SearchJob, SearchAnswer] = MicroBatcher(
            self._search_batch, name=f"search:{self.collection}", max_batch=max_batch,
            max_wait_ms=max_wait_ms, max_queue=max_queue, observer=observer)

    @property
    def version(self) -> IndexVersion:
        return self._version

    @property
    def version_name(self) -> str:
        return self._version.manifest.version

    def count(self) -> int:
        return int(self._version.index.ntotal)

    def served(self) -> ServedVersion:
        v = self._version
        m = v.manifest
        return ServedVersion(m.version, m.factory, m.dimension, int(v.index.ntotal),
                             m.recall_at_10, m.checkpoint_sha256, m.created_at,
                             dict(m.search_params), str(v.path))

    # -- searching (indexer.search: the one search path) ----------------------------------
    def _search_batch(self, jobs: list[SearchJob]) -> list[SearchAnswer]:
        return search_batch(self._version, jobs)  # the whole batch runs on one version

    def search(self, job: SearchJob, *, deadline: float | None = None) -> SearchAnswer:
        return self.batcher.run(job, deadline=deadline)

    def reconstruct(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors of ``ids`` -> ((m, d) float32, (m,) bool present) in the live version."""
        return reconstruct(self._version.index, ids)

    # -- swapping -------------------------------------------------------------------------
    def replace(self, version: IndexVersion) -> None:
        """Serve ``version`` (already checked; the caller holds ``write_lock``)."""
        self._version = version

    def swap(self, version: str | None = None) -> tuple[str, str]:
        """Load a published version (default: CURRENT), check it, serve it.

        Returns (previous, now served). In-flight searches finish on the previous version."""
        with self.write_lock:
            return self.swap_locked(version)

    def swap_locked(self, version: str | None = None) -> tuple[str, str]:
        """:meth:`swap` for a caller that already holds ``write_lock`` (Upsert and Delete
        catching up with a version another process published)."""
        try:
            name = version or current_version_name(self.root)
        except FileNotFoundError as e:
            raise NotFound(str(e)) from e
        if not (self.root / "versions" / name).is_dir():
            raise NotFound(f"no index version {name!r} under {self.root}")
        old = self._version.manifest.version
        if name == old:
            return old, old
        try:
            new = load_index_version(self.root, name)
        except (OSError, ValueError, RuntimeError) as e:
            self._notify("failed", name)
            raise FailedPrecondition(f"cannot load index version {name}: {e}") from e
        try:
            check_version(new, checkpoint_sha256=self.checkpoint_sha256, dim=self.dim)
        except FailedPrecondition:
            self._refused = name
            self._notify("refused", name)
            raise
        if (new.manifest.collection or DEFAULT_COLLECTION) != self.collection:
            self._refused = name
            self._notify("refused", name)
            raise FailedPrecondition(f"index version {name} holds collection "
                                     f"{new.manifest.collection!r}, not {self.collection!r}")
        self._version = new
        log.info("index %s: swapped %s -> %s (%d vectors)", self.collection, old, name,
                 new.index.ntotal, extra={"collection": self.collection, "index_version": name})
        self._notify("swapped", name)
        return old, name

    def _notify(self, outcome: str, version: str) -> None:
        if self._on_swap is not None:
            self._on_swap(self.collection, outcome, version)

    def watch(self, interval: float) -> None:
        """Poll CURRENT every ``interval`` seconds and swap to a newly published version."""
        if interval <= 0 or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, args=(interval,), daemon=True,
                                         name=f"watch-{self.collection}")
        self._watcher.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                name = current_version_name(self.root)
            except OSError:
                continue
            if name in (self._version.manifest.version, self._refused):
                continue
            try:
                self.swap(name)
            except FailedPrecondition as e:
                log.error("index %s: not swapping to %s: %s", self.collection, name, e,
                          extra={"collection": self.collection, "index_version": name})
            except NotFound:  # pruned or replaced meanwhile; the next poll sees the new pointer
                continue
            except Exception:  # the watcher must outlive any bad version
                log.exception("index %s: watching CURRENT failed", self.collection)

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        self.batcher.close()
