"""Embedder: the single inference path (evaluation, indexer and service all use it)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from training.checkpoint import Checkpoint, file_sha256, load_checkpoint
from training.data.folders import ImagePaths
from training.data.transforms import NormalizePixels, eval_pixels_transform, normalize_pixels
from training.face.haar import FaceNotFoundError, chips_or_fallback
from training.face.stages import FACE_STAGES
from training.models.spec import ModelSpec
from training.progress import ProgressBar
from training.progress import progress as progress_bar

log = logging.getLogger(__name__)


class FaceMisses(Dataset):
    """A dataset of (pixels, i) items through a transform that may raise FaceNotFoundError
    (a spec with ``face_on_miss = "require"``): a miss becomes (zero pixels, -1 - i), which
    :meth:`Embedder.stream_dataset` turns back into row i and reports, instead of an
    exception that would stop the DataLoader and its workers."""

    def __init__(self, dataset: Dataset, shape: tuple[int, ...]) -> None:
        self.dataset, self.shape = dataset, shape

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return self.dataset[i]
        except FaceNotFoundError:
            return torch.zeros(self.shape, dtype=torch.uint8), -1 - i


class Embedder:
    """Images -> embeddings with the preprocessing the checkpoint prescribes (including its
    face step, ``spec.face_align``, so that indexing and queries see the same pixels).

    Outputs are (n, d) float32; L2-normalised rows when ``spec.metric == "cosine"``. With a
    spec that requires a face, an image without one raises FaceNotFoundError, or, in bulk
    embedding given a ``missing`` list, is reported there and gets a NaN row.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, *, checkpoint_sha256: str = "",
                 device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.spec = spec
        self.device = torch.device(device)
        self.pixels = eval_pixels_transform(spec)  # bulk embedding: uint8 from the workers
        # one preprocessing pipeline (one face aligner, loaded once) for both entry points
        self.transform = T.Compose([self.pixels, NormalizePixels(spec)])
        self.checkpoint_sha256 = checkpoint_sha256
        # the detecting face step inside self.pixels, split out so that a batch of images
        # runs it at once (face_pixels); None when the spec has none
        ops = self.pixels.transforms
        at = next((i for i, op in enumerate(ops) if hasattr(op, "find_many")), None)
        self.face_step = ops[at] if at is not None else None
        if at is not None:
            self._before_face, self._after_face = T.Compose(ops[:at]), T.Compose(ops[at + 1:])

    def face_pixels(self, images: Sequence[Image.Image]
                    ) -> list[tuple[torch.Tensor | None, bool | None]]:
        """Decoded images -> (uint8 pixels of :attr:`pixels`, face found) each, the face step
        run once for the whole batch (one detector call, one landmark call): the same pixels
        as :attr:`pixels` gives image by image.

        found: None without a detecting face step; True when a face was found; False when
        none was, and then pixels are the step's fallback (the fixed crop; ``face_on_miss =
        "fallback"``) or None (``"require"``: the caller refuses the image). Misses are
        counted in FACE_STAGES by what was done."""
        if self.face_step is None:
            return [(self.pixels(im), None) for im in images]
        ready = [self._before_face(im) for im in images]
        return [(self._after_face(chip) if chip is not None else None, found)
                for chip, found in chips_or_fallback(self.face_step, ready)]

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu") -> Embedder:
        ckpt: Checkpoint = load_checkpoint(path)
        return cls(ckpt.build(), ckpt.spec, checkpoint_sha256=file_sha256(path), device=device)

    @property
    def dim(self) -> int:
        return self.spec.embedding_dim

    @property
    def model_version(self) -> str:
        return f"{self.spec.name}@{self.checkpoint_sha256[:12]}" if self.checkpoint_sha256 \
            else self.spec.name

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """(n, C, H, W) preprocessed -> (n, d) float32."""
        # channels-last is the convolutions' fast layout on the CPU (oneDNN) and on tensor
        # cores: 1.2-2x the throughput of every backbone we ship (benchmarks/embed_layout_bench.py)
        t0 = time.perf_counter()
        batch = batch.to(self.device)
        if batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        out = self.model(batch).float().cpu().numpy().astype(np.float32, copy=False)
        if self.spec.face_align:  # the face path's last stage (detect and align count theirs)
            FACE_STAGES.add("embed", time.perf_counter() - t0, len(batch))
        return out

    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, C, H, W) uint8 from :attr:`pixels` -> (n, d) float32, normalised as a batch."""
        return self.embed_tensors(normalize_pixels(pixels, self.spec))

    def embed_images(self, images: Sequence[Image.Image], *, batch_size: int = 64) -> np.ndarray:
        """Decoded PIL images -> (n, d) float32."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        chunks = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([self.transform(im) for im in images[i:i + batch_size]])
            chunks.append(self.embed_tensors(batch))
        return np.concatenate(chunks)

    def embed_paths(self, paths: Sequence[str | Path], *, batch_size: int = 64,
                    num_workers: int = 0, progress: bool = False,
                    flip_tta: bool = False, bar: ProgressBar | None = None,
                    missing: list[int] | None = None) -> np.ndarray:
        """Image files -> (n, d) float32 in the order given. Decoding runs in DataLoader
        workers (when ``num_workers`` > 0) so that it overlaps the forward pass; they send
        uint8 pixels, normalised here a batch at a time. ``bar``: a progress bar of the
        caller's, advanced per image (else ``progress`` shows one of its own).

        ``flip_tta``: horizontal-flip test-time augmentation, the mean of the embeddings of
        each image and its mirror image (re-normalised for cosine models).

        ``missing``: images without a face (a spec that requires one) are appended to it by
        position and get NaN rows; without it such an image raises FaceNotFoundError.
        """
        if not flip_tta:
            return self._embed_paths(paths, batch_size=batch_size, num_workers=num_workers,
                                     progress=progress, flips=False, bar=bar, missing=missing)[0]
        plain, flipped = self._embed_paths(paths, batch_size=batch_size, num_workers=num_workers,
                                           progress=progress, flips=True, bar=bar,
                                           missing=missing)
        return self.combine_flips(plain, flipped)

    def embed_paths_and_flips(self, paths: Sequence[str | Path], *, batch_size: int = 64,
                              num_workers: int = 0,
                              progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Image files -> ((n, d), (n, d)): embeddings of the images and of their horizontal
        mirror images, from one decoding pass (the flip commutes with resize + centre crop)."""
        return self._embed_paths(paths, batch_size=batch_size, num_workers=num_workers,
                                 progress=progress, flips=True)

    def combine_flips(self, plain: np.ndarray, flipped: np.ndarray) -> np.ndarray:
        """Flip-TTA embedding: (plain + flipped) / 2, L2-normalised again for cosine models."""
        out = (plain + flipped) / 2
        if self.spec.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32, copy=False)

    def stream_paths(self, paths: Sequence[str | Path], *, batch_size: int = 64,
                     num_workers: int = 0, missing: list[int] | None = None
                     ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Image files -> (row numbers, (b, C, H, W) model input) batches, in the order given.
        ``num_workers`` DataLoader processes decode ahead of the model (a few batches each)
        and send uint8 pixels, normalised here a whole batch at a time. ``missing``: see
        :meth:`stream_dataset`."""
        return self.stream_dataset(ImagePaths([str(p) for p in paths], self.pixels),
                                   batch_size=batch_size, num_workers=num_workers,
                                   missing=missing)

    def stream_dataset(self, dataset: Dataset, *, batch_size: int = 64, num_workers: int = 0,
                       missing: list[int] | None = None
                       ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Like :meth:`stream_paths` over any dataset of (uint8 pixels of ``self.pixels``'s
        shape, row number) items, e.g. a cache of preprocessed pixels.

        With a spec that requires a face, an image without one is logged and its row
        appended to ``missing`` (its input in the batch is zeros, for the caller to drop);
        without ``missing`` it raises FaceNotFoundError."""
        if not len(dataset):
            return
        if self.spec.requires_face:
            shape = (self.spec.in_channels, self.spec.input_size, self.spec.input_size)
            dataset = FaceMisses(dataset, shape)
        names = getattr(getattr(dataset, "dataset", dataset), "paths", None)
        extra = {"prefetch_factor": 4} if num_workers > 0 else {}
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                            shuffle=False, persistent_workers=False, **extra)
        for pixels, idx in loader:
            rows = idx.numpy()
            miss = rows < 0
            if miss.any():
                rows = np.where(miss, -1 - rows, rows)
                for r in rows[miss].tolist():
                    name = names[r] if names is not None else f"image {r}"
                    if missing is None:
                        raise FaceNotFoundError(f"no face found in {name} (the model's spec "
                                                "requires a face)")
                    log.warning("no face found in %s: not embedded (the model's spec requires "
                                "a face)", name)
                    missing.append(r)
            yield rows, normalize_pixels(pixels, self.spec)

    def _embed_paths(self, paths: Sequence[str | Path], *, batch_size: int, num_workers: int,
                     progress: bool, flips: bool, bar: ProgressBar | None = None,
                     missing: list[int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        out = np.zeros((len(paths), self.dim), np.float32)
        out_flip = np.zeros_like(out) if flips else None
        own = bar is None
        if own:
            bar = progress_bar(total=len(paths), unit="img", desc="embed", enabled=progress)
        before = len(missing) if missing is not None else 0
        for rows, batch in self.stream_paths(paths, batch_size=batch_size,
                                             num_workers=num_workers, missing=missing):
            out[rows] = self.embed_tensors(batch)
            if out_flip is not None:
                out_flip[rows] = self.embed_tensors(batch.flip(-1))
            bar.update(len(rows))
        if own:
            bar.close()
        if missing is not None and len(missing) > before:
            for o in (out, out_flip):
                if o is not None:
                    o[missing[before:]] = np.nan
        return out, out_flip
