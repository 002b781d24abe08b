"""The collections a server serves: one live index each (hot swaps, CURRENT watchers), by name."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from indexer.versions import IndexVersion
from service.batching import BatchObserver
from service.errors import NotFound
from service.live_index import LiveIndex, SwapObserver
from service.store_index import StoreIndex
from service.validation import check_collection, check_version_name

Served = LiveIndex | StoreIndex


class CollectionRegistry:
    """Live indexes by collection name; the first one given is the default collection.
    ``stored``: collections served from a vector store (no FAISS index on disk), after
    ``versions``.

    ``on_swap(collection, outcome, version)`` hears of every swap, refused and failed one (the
    core clears its catalogue cache and reports to its observer there)."""

    def __init__(self, versions: Sequence[IndexVersion], *, checkpoint_sha256: str, dim: int,
                 max_batch: int, max_wait_ms: float, max_queue: int,
                 on_batch: BatchObserver | None = None,
                 on_swap: SwapObserver | None = None,
                 stored: Sequence[StoreIndex] = ()) -> None:
        self.lives: dict[str, Served] = {}
        for v in versions:
            live = LiveIndex(v, checkpoint_sha256=checkpoint_sha256, dim=dim,
                             max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             observer=on_batch, on_swap=on_swap)
            if live.collection in self.lives:
                live.close()
                self.close()
                raise ValueError(f"collection {live.collection!r} is served twice")
            self.lives[live.collection] = live
        for live in stored:
            if live.collection in self.lives:
                for other in stored:
                    other.close()
                self.close()
                raise ValueError(f"collection {live.collection!r} is served twice")
            self.lives[live.collection] = live
        if not self.lives:
            raise ValueError("no collection to serve")
        self.default = next(iter(self.lives))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.lives)

    def __iter__(self) -> Iterator[Served]:
        return iter(self.lives.values())

    def name(self, collection: str) -> str:
        """``""`` -> the default collection's name; a name no catalogue could hold is
        :class:`InvalidInput` before any lookup quotes it."""
        return check_collection(collection) or self.default

    def live(self, collection: str = "") -> Served:
        name = self.name(collection)
        live = self.lives.get(name)
        if live is None:
            raise NotFound(f"collection {name!r} is not served "
                           f"(this server serves {', '.join(map(repr, self.lives))})")
        return live

    def find(self, collection: str) -> Served | None:
        """The live index of ``collection`` ("" for the default), None if it is not served."""
        return self.lives.get(self.name(collection))

    def reload(self, collection: str = "", version: str | None = None) -> tuple[str, str, str]:
        """Serve another published version (default: CURRENT) -> (collection, previous, now)."""
        live = self.live(collection)
        old, new = live.swap(check_version_name(version) if version else None)
        return live.collection, old, new

    def swap_root(self, root: str | Path, version: str | None = None) -> str:
        """Load a version (default: CURRENT) of the collection under ``root`` and switch to it;
        in-flight searches finish on the old one."""
        root = Path(root).resolve()
        for live in self.lives.values():
            if not live.pushes_filters and live.root.resolve() == root:
                return live.swap(version)[1]
        raise NotFound(f"no served collection has its index under {root}")

    def watch(self, interval: float) -> None:
        """Swap to newly published versions (CURRENT polled every ``interval`` seconds)."""
        for live in self.lives.values():
            live.watch(interval)

    def close(self) -> None:
        for live in self.lives.values():
            live.close()

