"""A cache of preprocessed pixels, by image content and preprocessing: reindexes after a
retraining that keeps the input size skip decoding altogether.

``imgsim reindex`` is run after every retraining, over the same catalogue. Decoding and resizing
a JPEG costs about as much of a 2-core box as a small model's forward pass, so for small models
it bounds the reindex. Most retrainings keep the preprocessing (input size, resize, channels,
face alignment): the model sees exactly the same uint8 pixels as last time. This cache keeps
them, one file per distinct content (the catalogue's sha256) under a directory per
preprocessing, so the next reindex reads ``C x H x W`` bytes instead of decoding a JPEG.

Layout: ``<root>/<signature>/<sha256[:2]>/<sha256>.u8`` (raw uint8, C x H x W), each written
atomically (temporary name, then rename), so that concurrent shard workers and crashes never
leave a torn file; a file of the wrong size is decoded again and rewritten. The cache costs
``C * input_size**2`` bytes per image (12 KB at 64 px, 75 KB at 160 px); delete it at will.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from indexer.files import atomic_write
from training.data.transforms import eval_pixels_transform
from training.models.spec import ModelSpec

FORMAT = 1  # bump when eval_pixels_transform changes what it computes


def signature(spec: ModelSpec) -> str:
    """What determines the pixels a model sees, hashed: models sharing it share cache files."""
    key = {"format": FORMAT, "input_size": spec.input_size, "resize_size": spec.resize_size,
           "in_channels": spec.in_channels, "face_align": spec.face_align}
    if spec.requires_face:  # fallback pixels of a faceless image must not serve a "require"
        key["face_on_miss"] = spec.face_on_miss  # (absent otherwise: older caches stay valid)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class PixelCache:
    """Preprocessed uint8 pixels of ``spec``'s eval transform, by content sha256."""

    def __init__(self, root: str | Path, spec: ModelSpec,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None) -> None:
        """``transform``: the caller's instance of ``eval_pixels_transform(spec)`` (e.g. an
        Embedder's ``pixels``), so that its face aligner is not built and loaded again."""
        self.dir = Path(root) / signature(spec)
        self.shape = (spec.in_channels, spec.input_size, spec.input_size)
        self.transform = transform or eval_pixels_transform(spec)

    def path(self, sha256: str) -> Path:
        return self.dir / sha256[:2] / f"{sha256}.u8"

    def get(self, sha256: str, image_path: str) -> torch.Tensor:
        """The pixels of the content ``sha256`` (stored at ``image_path``): from the cache,
        else decoded and stored."""
        file = self.path(sha256)
        try:
            data = np.fromfile(file, np.uint8)
        except OSError:  # not cached yet (or unreadable: decode again)
            data = None
        if data is not None and data.size == int(np.prod(self.shape)):
            return torch.from_numpy(data.reshape(self.shape))
        with Image.open(image_path) as img:
            pixels = self.transform(img)
        atomic_write(file, lambda f: f.write(pixels.numpy().tobytes()), fsync=False)
        return pixels

    def dataset(self, paths: Sequence[str], sha256s: Sequence[str]) -> CachedPixels:
        return CachedPixels(self, paths, sha256s)


class CachedPixels(Dataset):
    """Images by path and content hash, through a :class:`PixelCache` (index i -> (pixels, i))."""

    def __init__(self, cache: PixelCache, paths: Sequence[str], sha256s: Sequence[str]) -> None:
        if len(paths) != len(sha256s):
            raise ValueError(f"{len(paths)} paths but {len(sha256s)} hashes")
        self.cache, self.paths, self.sha256s = cache, list(paths), list(sha256s)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.cache.get(self.sha256s[i], self.paths[i]), i
