"""Images -> embeddings for the service: checked decoding in a thread pool, micro-batched forward."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from service.batching import BatchObserver, MicroBatcher, wait_result
from service.errors import DeadlineExceeded, InvalidInput
from service.face import check_face_matches_spec
from service.limits import DEFAULT_FORMATS
from training.data.transforms import ImageDecodeError, decode_image
from training.models.embedder import Embedder

log = logging.getLogger(__name__)

NO_FACE = "no face found in the image (this model's checkpoint requires a face)"


class PixelBudget:
    """Bounds the decoded pixels held between decoding and the batched face step (a queued
    decoded photo is full size, up to ``max_pixels``): ``take`` blocks while the budget is
    spent (one image always fits), until the deadline."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cv = threading.Condition()

    def take(self, n: int, deadline: float | None) -> None:
        with self._cv:
            while self.used > 0 and self.used + n > self.limit:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DeadlineExceeded("deadline exceeded waiting to decode the image "
                                           "(the face step's queue is full)")
                self._cv.wait(left)
            self.used += n

    def give(self, n: int) -> None:
        with self._cv:
            self.used -= n
            self._cv.notify_all()


def _cancel_queued(job: Future) -> None:
    if not job.cancelled() and job.exception() is None:
        job.result().cancel()


@dataclass(frozen=True)
class Embedded:
    """Embeddings of inline images and what the face step did with each: None (the model has
    no detecting face step), True (a face was found and aligned), False (no face: the step's
    fallback crop was embedded; a model that requires a face refuses the image instead)."""

    vectors: np.ndarray
    faces: list[bool | None]


class ImagePipeline:
    """Encoded bytes -> (n, d) float32 embeddings, the model's own preprocessing in between.

    Decoding runs in a pool of ``decode_workers`` threads. For a model with a detecting face
    step (``spec.face_align``, the same step as indexing, see ``Embedder``) the decoded images
    of concurrent requests then share face batches (one MTCNN and one landmark call each, in
    a :class:`MicroBatcher`; the decoded pixels waiting for it are bounded by a
    :class:`PixelBudget` of ``4 * max_pixels``); otherwise the pool also runs the transform.
    The forward pass runs in a second MicroBatcher, so images of concurrent requests share
    batches there too.
    """

    def __init__(self, embedder: Embedder, *, max_pixels: int = 40_000_000,
                 formats: Sequence[str] = DEFAULT_FORMATS, face: str = "off",
                 decode_workers: int = 2, max_batch: int = 32, max_wait_ms: float = 2.0,
                 max_queue: int = 1024, observer: BatchObserver | None = None) -> None:
        self.embedder = embedder
        self.max_pixels = max_pixels
        self.formats = tuple(f.upper() for f in formats)
        self.face = check_face_matches_spec(face, embedder.spec)  # serve --face: a check only
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")
        self.batcher: MicroBatcher[torch.Tensor, np.ndarray] = MicroBatcher(
            self._forward, name="embed", max_batch=max_batch, max_wait_ms=max_wait_ms,
            max_queue=max_queue, observer=observer)
        self.face_batcher: MicroBatcher[Image.Image, tuple] | None = None
        if embedder.face_step is not None:
            self._budget = PixelBudget(4 * max_pixels)
            self.face_batcher = MicroBatcher(
                embedder.face_pixels, name="face", max_batch=max_batch,
                max_wait_ms=max_wait_ms, max_queue=max_queue, observer=observer)

    def _forward(self, pixels: list[torch.Tensor]) -> list[np.ndarray]:
        return list(self.embedder.embed_pixels(torch.stack(pixels)))

    def decode(self, data: bytes) -> Image.Image:
        """Checked decode: non-empty, an accepted format, at most ``max_pixels``."""
        try:
            img = decode_image(data, max_pixels=self.max_pixels)
        except ImageDecodeError as e:
            raise InvalidInput(str(e)) from e
        if (img.format or "").upper() not in self.formats:
            raise InvalidInput(f"unsupported image format {img.format or 'unknown'} "
                               f"(accepted: {', '.join(self.formats)})")
        return img

    def preprocess(self, data: bytes) -> torch.Tensor:
        """Encoded bytes -> (C, H, W) uint8 pixels of the model's preprocessing (normalised
        a whole batch at a time in the forward pass; a quarter of float32's memory queued),
        for a model without a detecting face step (those go through the face batcher)."""
        return self.embedder.pixels(self.decode(data))

    def _decode_then_queue(self, data: bytes, deadline: float | None) -> Future:
        """Decode (in a pool thread), then queue the image for the face step at once: its
        pixels count against the budget until the face step is done with it (done or
        cancelled), image by image, so a request's later images never wait on its earlier."""
        img = self.decode(data)
        n = img.width * img.height
        self._budget.take(n, deadline)
        try:
            queued = self.face_batcher.submit(img, deadline=deadline)
        except BaseException:
            self._budget.give(n)
            raise
        queued.add_done_callback(lambda _: self._budget.give(n))
        return queued

    def embed(self, datas: Sequence[bytes], *, deadline: float | None = None,
              names: Sequence[str] | None = None) -> np.ndarray:
        """Encoded images -> (n, d) float32. Errors name the image (``names[i]``)."""
        return self.embed_faces(datas, deadline=deadline, names=names).vectors

    def embed_faces(self, datas: Sequence[bytes], *, deadline: float | None = None,
                    names: Sequence[str] | None = None) -> Embedded:
        """:meth:`embed`, with what the face step did with each image."""
        if not datas:
            return Embedded(np.zeros((0, self.embedder.dim), np.float32), [])
        if self.face_batcher is None:
            jobs = [self._pool.submit(self.preprocess, d) for d in datas]
            pixels = self._wait_all(jobs, deadline, names)
            faces: list[bool | None] = [None] * len(datas)
        else:
            jobs = [self._pool.submit(self._decode_then_queue, d, deadline) for d in datas]
            queued = []
            try:
                queued = self._wait_all(jobs, deadline, names)
                done = [wait_result(f, deadline, what="the face step") for f in queued]
            except BaseException:  # what is not run yet is not to be run (pixels go back)
                for f in queued:
                    f.cancel()
                for job in jobs:  # also what a decode thread queues after this
                    job.add_done_callback(_cancel_queued)
                raise
            for i, (px, _) in enumerate(done):
                if px is None:  # no face, and the checkpoint requires one
                    raise InvalidInput(f"{names[i]}: {NO_FACE}" if names else NO_FACE)
            pixels, faces = [px for px, _ in done], [found for _, found in done]
        return Embedded(np.stack(self.batcher.run_many(pixels, deadline=deadline)), faces)

    @staticmethod
    def _wait_all(jobs: list[Future], deadline: float | None,
                  names: Sequence[str] | None) -> list:
        out = []
        for i, job in enumerate(jobs):
            try:
                out.append(wait_result(job, deadline, what="image decoding"))
            except InvalidInput as e:
                for j in jobs[i + 1:]:
                    j.cancel()
                raise InvalidInput(f"{names[i]}: {e}" if names else str(e)) from e
        return out

    def close(self) -> None:
        self.batcher.close()
        if self.face_batcher is not None:
            self.face_batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
