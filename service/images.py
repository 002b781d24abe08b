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
from service.face import check_face_matches_spec
from service.limits import DEFAULT_FORMATS
from training.data.transforms import ImageDecodeError, decode_image
from training.face import FaceNotFoundError
from training.models.embedder import Embedder

log = logging.getLogger(__name__)

NO_FACE = "no face found in the image (this model's checkpoint requires a face)"


class ImagePipeline:
    """Encoded bytes -> (n, d) float32 embeddings, the model's own preprocessing in between.

    Decoding and the transform (with the checkpoint's face step, if its spec has one: the
    same as indexing, see ``Embedder``) run in a pool of ``decode_workers`` threads
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
        self.face = check_face_matches_spec(face, embedder.spec)  # serve --face: a check only
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

        The face step, if any, is the spec's (``spec.face_align``); with
        ``face_on_miss = "require"`` an image without a face is INVALID_ARGUMENT."""
        img = self.decode(data)
        try:
            return self.embedder.pixels(img)
        except FaceNotFoundError as e:  # the spec's face step found none and requires one
            raise InvalidInput(NO_FACE) from e

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
