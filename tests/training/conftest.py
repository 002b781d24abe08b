"""Fixtures of the training tests: an LFW-shaped folder made of real digit images."""

from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def fake_lfw(tmp_path_factory, digits_dir) -> Path:
    """An LFW-shaped folder made of digits: person D<k> = digit k, 2 folds of 5 + 5 pairs,
    fold 1 uses digits 0-4 and fold 2 digits 5-9 (people never cross folds)."""
    root = tmp_path_factory.mktemp("lfw")
    for d in range(10):
        person = root / "lfw-deepfunneled" / f"D{d}"
        person.mkdir(parents=True)
        for i, src in enumerate(sorted((digits_dir / str(d)).glob("*.png"))[:4], start=1):
            Image.open(src).convert("RGB").save(person / f"D{d}_{i:04d}.jpg")
    lines = ["2\t5"]
    for base in (0, 5):
        lines += [f"D{base + k}\t1\t{k % 3 + 2}" for k in range(5)]
        lines += [f"D{base + k}\t{k % 4 + 1}\tD{base + (k + 1) % 5}\t{k % 3 + 1}" for k in range(5)]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root
