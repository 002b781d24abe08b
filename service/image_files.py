"""Where a served collection's images are: the files catalogue rows name and its blob store."""

from __future__ import annotations

from pathlib import Path

from service.errors import NotFound
from service.live_index import LiveIndex
from service.store import BlobStore, CatalogEntry, blob_root


class ImageFiles:
    """The encoded images of catalogue rows, and each collection's blob store (inline Upsert
    images, under ``blob_dir`` or ``<index root>/blobs``)."""

    def __init__(self, *, blob_dir: str = "") -> None:
        self._blob_dir = blob_dir

    def blob_dir(self, live: LiveIndex) -> Path:
        return blob_root(live.root, live.collection, self._blob_dir)

    def blobs(self, live: LiveIndex) -> BlobStore:
        return BlobStore(self.blob_dir(live))

    def read(self, live: LiveIndex | None, e: CatalogEntry, name: str) -> bytes:
        """The encoded image of a catalogue row (``live``: its collection's index, None if it
        is not served). An upload stored before blob paths were kept relative to the index
        root holds a path relative to that server's working directory: when it is not found
        there, its content is looked up in the collection's blob store."""
        if e.storage == "blob" and live is None:
            raise NotFound(f"{name}: {e.key!r} is kept in the blob store of a collection this "
                           "server does not serve")
        path = e.file(live.root) if live is not None else Path(e.path)
        try:
            return path.read_bytes()
        except OSError as err:
            if live is not None and e.storage == "file" and not path.is_absolute():
                blob = self.blobs(live).path_for(e.sha256, path.suffix[1:])
                if blob.is_file():
                    return blob.read_bytes()
            raise NotFound(f"{name}: the file of {e.key!r} is gone: {err}") from err
