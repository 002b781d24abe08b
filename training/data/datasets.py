"""Dataset formats (image folder, LFW, CUB) with their class-disjoint train/test splits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.data.folders import Sample, list_image_folder, split_by_class
from training.settings import DEFAULT_DATA_ROOT, data_root  # noqa: F401  (the one data root)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class DatasetSplit:
    """Class-disjoint training and test samples of one dataset.

    ``augment`` names the training augmentation suited to the images (see
    ``transforms.AUGMENTATIONS``); ``resize_ratio`` is resize_size / input_size for the eval
    transform (LFW: 2.0 keeps the central face, not the background).
    """

    name: str
    train: list[Sample]
    test: list[Sample]
    augment: str = "crop"
    resize_ratio: float = 1.0

    def describe(self) -> str:
        n_cls = lambda s: len({x.label for x in s})  # noqa: E731
        return (f"{self.name}: train {len(self.train)} images / {n_cls(self.train)} classes, "
                f"test {len(self.test)} images / {n_cls(self.test)} classes")


def folder_split(data: str | Path, *, test_fraction: float = 0.0, seed: int = 0) -> DatasetSplit:
    """<data>/<class>/<image>; a random ``test_fraction`` of the classes is held out as test
    classes (default none: a folder is either the training pool or the test set)."""
    samples = list_image_folder(data)
    train, test = split_by_class(samples, val_fraction=test_fraction, seed=seed)
    return DatasetSplit("folder", train, test, augment="crop", resize_ratio=1.0)


def _read_table(path: Path) -> dict[int, str]:
    """CUB's '<id>, <value>' (or space separated) lines -> {id: value}."""
    if not path.is_file():
        raise FileNotFoundError(f"CUB file not found: {path}")
    out: dict[int, str] = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.replace(",", " ", 1).strip().partition(" ")
        if not sep:
            raise ValueError(f"{path}:{i}: expected '<id>, <value>', got {line!r}")
        out[int(key)] = value.strip()
    return out


def cub_samples(data: str | Path) -> list[tuple[Sample, int]]:
    """Every CUB image with its class id, in image-id order."""
    root = Path(data)
    images = _read_table(root / "images.txt")
    labels = _read_table(root / "image_class_labels.txt")
    classes = _read_table(root / "classes.txt")
    out = []
    for img_id, rel in sorted(images.items()):
        cls = int(labels[img_id])
        out.append((Sample(str(root / "images" / rel), classes[cls]), cls))
    return out


def cub_split(data: str | Path, *, n_train_classes: int | None = None, **_kw) -> DatasetSplit:
    """The deep-metric-learning convention: the first half of the class ids train, the rest
    test (CUB-100: 0-49 / 50-99). ``train_test_split.txt`` (a per-image split of the same
    classes) is not used: it would test on classes seen in training."""
    pairs = cub_samples(data)
    ids = sorted({c for _, c in pairs})
    cut = n_train_classes if n_train_classes is not None else len(ids) // 2
    first = set(ids[:cut])
    train = [s for s, c in pairs if c in first]
    test = [s for s, c in pairs if c not in first]
    return DatasetSplit("cub", train, test, augment="crop", resize_ratio=1.14)


def lfw_split(data: str | Path, *, train_folds: tuple[int, ...] = (1, 2, 3, 4, 5),
              **_kw) -> DatasetSplit:
    """Identity-disjoint halves: train on every image of the people who appear in the pairs of
    ``train_folds``, test on the people of the other folds (people never cross folds)."""
    from training.evaluation.lfw import IMAGES_DIR, load_view2, person_of, resolve_lfw_root

    root = resolve_lfw_root(data)
    pairs = load_view2(root)
    people: dict[bool, set[str]] = {True: set(), False: set()}
    for a, b, f in zip(pairs.paths_a, pairs.paths_b, pairs.fold, strict=True):
        people[int(f) in train_folds] |= {person_of(a), person_of(b)}
    images = root / IMAGES_DIR

    def samples(names: set[str]) -> list[Sample]:
        return [Sample(str(p), n) for n in sorted(names) for p in sorted((images / n).glob("*.jpg"))]

    return DatasetSplit("lfw", samples(people[True]), samples(people[False]), augment="face",
                         resize_ratio=2.0)


FORMATS: dict[str, Callable[..., DatasetSplit]] = {
    "folder": folder_split,
    "cub": cub_split,
    "lfw": lfw_split,
}


def load_split(fmt: str, data: str | Path, **kwargs) -> DatasetSplit:
    """The named format's class-disjoint split of the dataset at ``data``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; valid: {', '.join(sorted(FORMATS))}")
    split = FORMATS[fmt](data, **kwargs)
    log.info("%s", split.describe())
    return split
