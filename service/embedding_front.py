"""Images to vectors: inline bytes decoded and embedded in micro-batches, catalogue keys read
back from the live index (or, when not indexed, their files embedded)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from service.collection_registry import CollectionRegistry
from service.domain import ImageInput
from service.errors import InvalidInput, NotFound
from service.image_files import ImageFiles
from service.images import Embedded, ImagePipeline
from service.store import entries_by_keys
from service.validation import check_key
from training.models.embedder import Embedder


class EmbeddingFront:
    """The one way the service turns :class:`ImageInput` s into (n, d) float32 embeddings."""

    def __init__(self, embedder: Embedder, pipeline: ImagePipeline,
                 collections: CollectionRegistry, files: ImageFiles,
                 sessions: sessionmaker[Session]) -> None:
        self.embedder, self.pipeline = embedder, pipeline
        self._collections, self._files, self._sessions = collections, files, sessions

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def embed_bytes(self, datas: Sequence[bytes], *, deadline: float | None = None,
                    names: Sequence[str] | None = None) -> np.ndarray:
        """(n, d) float32 embeddings of encoded images (decoded, micro-batched)."""
        return self.pipeline.embed(datas, deadline=deadline, names=names)

    def vector(self, image: ImageInput, *, deadline: float | None = None) -> np.ndarray:
        """(d,) float32 embedding of an inline image or a catalogued one."""
        return self.vectors([image], deadline=deadline)[0]

    def vectors(self, images: Sequence[ImageInput], *, deadline: float | None = None,
                names: Sequence[str] | None = None) -> np.ndarray:
        """(n, d) float32: inline images embedded together (micro-batched), keys looked up."""
        return self.vectors_and_faces(images, deadline=deadline, names=names).vectors

    def vectors_and_faces(self, images: Sequence[ImageInput], *, deadline: float | None = None,
                          names: Sequence[str] | None = None) -> Embedded:
        """:meth:`vectors`, with what the face step did with each inline image (see
        :class:`~service.images.Embedded`; None for a catalogued image, embedded at ingest)."""
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        out = np.zeros((len(images), self.dim), np.float32)
        faces: list[bool | None] = [None] * len(images)
        inline = []
        for i, im in enumerate(images):
            if im.data is not None and im.key is not None:
                raise InvalidInput(f"{names[i]}: give an image as bytes or as a key, not both")
            if im.data is not None:
                inline.append(i)
            elif not im.key:
                raise InvalidInput(f"{names[i]}: image is missing: set either data or key")
            else:
                check_key(im.key, f"{names[i]}: key")
        keyed = sorted(set(range(len(images))) - set(inline))
        if keyed:
            out[keyed] = self._key_vectors([images[i] for i in keyed], [names[i] for i in keyed],
                                           deadline=deadline)
        if inline:
            done = self.pipeline.embed_faces([images[i].data for i in inline],
                                             deadline=deadline, names=[names[i] for i in inline])
            out[inline] = done.vectors
            for i, found in zip(inline, done.faces, strict=True):
                faces[i] = found
        return Embedded(out, faces)

    def _key_vectors(self, images: Sequence[ImageInput], names: Sequence[str], *,
                     deadline: float | None) -> np.ndarray:
        out = np.zeros((len(images), self.dim), np.float32)
        by_coll: dict[str, list[int]] = {}
        for i, im in enumerate(images):
            by_coll.setdefault(self._collections.name(im.collection), []).append(i)
        for coll, idx in by_coll.items():
            with self._sessions() as s:
                found = entries_by_keys(s, [images[i].key for i in idx], collection=coll)
            missing = [i for i in idx if images[i].key not in found]
            if missing:
                i = missing[0]
                raise NotFound(f"{names[i]}: no image with key {images[i].key!r} in collection "
                               f"{coll!r}")
            entries = [found[images[i].key] for i in idx]
            live = self._collections.find(coll)
            present = np.zeros(len(idx), bool)
            if live is not None:
                vecs, present = live.reconstruct(np.array([e.id for e in entries], np.int64))
                out[[idx[j] for j in np.flatnonzero(present)]] = vecs[present]
            for j in np.flatnonzero(~present):  # catalogued, not in the index: embed the file
                data = self._files.read(live, entries[j], names[idx[j]])
                out[idx[j]] = self.pipeline.embed([data], deadline=deadline,
                                                  names=[names[idx[j]]])[0]
        return out
