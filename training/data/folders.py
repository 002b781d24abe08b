"""Labelled image lists: reading image folders, class-disjoint splits, and a Dataset over them."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm")


@dataclass(frozen=True)
class Sample:
    path: str
    label: str


def list_image_folder(root: str | Path, *, min_per_class: int = 1) -> list[Sample]:
    """One sub-folder per class; images directly inside each sub-folder, sorted for determinism."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    samples: list[Sample] = []
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in cls_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if len(files) >= min_per_class:
            samples += [Sample(str(f), cls_dir.name) for f in files]
    if not samples:
        raise ValueError(f"no images found under {root} (expected <root>/<class>/<image>)")
    return samples


def split_by_class(samples: Sequence[Sample], *, val_fraction: float, seed: int = 0,
                   min_val_per_class: int = 2) -> tuple[list[Sample], list[Sample]]:
    """Class-disjoint split: whole classes go to validation. Classes with fewer than
    ``min_val_per_class`` images never go to validation (they could form no positive pair)."""
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    eligible = sorted(c for c, v in by_class.items() if len(v) >= min_val_per_class)
    rng = random.Random(seed)
    rng.shuffle(eligible)
    n_val = int(round(len(eligible) * val_fraction))
    val_classes = set(eligible[:n_val])
    train = [s for s in samples if s.label not in val_classes]
    val = [s for s in samples if s.label in val_classes]
    return train, val


class LabelledImages(Dataset):
    """(image tensor, integer label) pairs; label ids follow sorted class names."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], torch.Tensor]):
        self.samples = list(samples)
        self.classes = sorted({s.label for s in self.samples})
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [self.class_to_idx[s.label] for s in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.samples[i].path) as img:
            return self.transform(img), self.targets[i]


class ImagePaths(Dataset):
    """Images by path, for embedding (index i -> (tensor, i))."""

    def __init__(self, paths: Sequence[str], transform: Callable[[Image.Image], torch.Tensor]):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            return self.transform(img), i
