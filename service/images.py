"""Images -> embeddings for the service: checked decoding in a thread pool, micro-batched forward."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from service.batching import BatchObserver, MicroBatcher, wait_result
from service.errors import InvalidInput
from service.face import check_face_mode, crop_largest_face, detect_faces
from service.limits import DEFAULT_FORMATS
from training.data.transforms import ImageDecodeError, decode_image
from training.face import FaceNotFoundError
from training.models.embedder import Embedder

log = logging.getLogger(__name__)

NO_FACE = "no face found in the image (this model needs a face)"


class ImagePipeline:
    """Encoded bytes -> (n, d) float32 embeddings, the model's own preprocessing in between.

    Decoding, the face crop and the transform run in a pool of ``decode_workers`` threads
    (which also bounds how many decoded images are in memory at once); the forward pass runs
    in a :class:`MicroBatcher`, so images of concurrent requests share batches.
    """

    def __init__(self, embedder: Embedder, *, max_pixels: int = 40_000_000,
                 formats: Sequence[str] = DEFAULT_FORMATS, face: str = "off",
                 decode_workers: int = 2, max_batch: int = 32, max_wait_ms: float = 2.0,
                 max_queue: int = 1024, observer: BatchObserver | None = None) -> None:
        self.embedder = embedder
        self.max_pixels = max_pixels
        self.formats = tuple(f.upper() for f in formats)
        self.face = check_face_mode(face)
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")
        self.batcher: MicroBatcher[torch.Tensor, np.ndarray] = MicroBatcher(
            self._forward, name="embed", max_batch=max_batch, max_wait_ms=max_wait_ms,
            max_queue=max_queue, observer=observer)

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
        a whole batch at a time in the forward pass; a quarter of float32's memory queued).

        A model whose spec names a face aligner (``spec.face_align``) detects and aligns faces
        in its own transform; the face mode then only decides whether an image without a
        detected face is refused. Other models get the largest face cropped here."""
        img = self.decode(data)
        if self.face != "off":
            if self.embedder.spec.face_align:
                if self.face == "require" and not detect_faces(img):
                    raise InvalidInput(NO_FACE)
            else:
                face = crop_largest_face(img)
                if face is None and self.face == "require":
                    raise InvalidInput(NO_FACE)
                img = face if face is not None else img
        try:
            return self.embedder.pixels(img)
        except FaceNotFoundError as e:  # the model's own aligner found none
            raise InvalidInput(f"{NO_FACE}: {e}") from e

    def embed(self, datas: Sequence[bytes], *, deadline: float | None = None,
              names: Sequence[str] | None = None) -> np.ndarray:
        """Encoded images -> (n, d) float32. Errors name the image (``names[i]``)."""
        if not datas:
            return np.zeros((0, self.embedder.dim), np.float32)
        jobs = [self._pool.submit(self.preprocess, d) for d in datas]
        pixels = []
        for i, job in enumerate(jobs):
            try:
                pixels.append(wait_result(job, deadline, what="image decoding"))
            except InvalidInput as e:
                for j in jobs[i + 1:]:
                    j.cancel()
                raise InvalidInput(f"{names[i]}: {e}" if names else str(e)) from e
        return np.stack(self.batcher.run_many(pixels, deadline=deadline))

    def close(self) -> None:
        self.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
