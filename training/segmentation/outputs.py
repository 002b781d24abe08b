"""Writing segmentation results: masks in the ISBI convention, probability maps, overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def save_mask(path: str | Path, membrane: np.ndarray) -> Path:
    """(H, W) bool membrane map -> PNG with membrane black (0) and interior white (255),
    the convention of the ISBI 2012 labels."""
    Image.fromarray(np.where(membrane, 0, 255).astype(np.uint8), "L").save(path)
    return Path(path)


def save_probability(path: str | Path, prob: np.ndarray) -> Path:
    """(H, W) membrane probability in [0, 1] -> 8-bit grey PNG (white = membrane)."""
    Image.fromarray((np.clip(prob, 0, 1) * 255).round().astype(np.uint8), "L").save(path)
    return Path(path)


def overlay(image: np.ndarray, membrane: np.ndarray, *, true_membrane: np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """(H, W) grey image in [0, 1] with predicted membrane tinted red; with a ground truth,
    missed membrane is tinted blue (false negatives) -> (H, W, 3) uint8."""
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    red = np.array([1.0, 0.1, 0.1])
    rgb[membrane] = (1 - alpha) * rgb[membrane] + alpha * red
    if true_membrane is not None:
        missed = true_membrane.astype(bool) & ~membrane
        rgb[missed] = (1 - alpha) * rgb[missed] + alpha * np.array([0.1, 0.3, 1.0])
    return (rgb * 255).round().astype(np.uint8)


def save_overlay(path: str | Path, image: np.ndarray, membrane: np.ndarray,
                 true_membrane: np.ndarray | None = None) -> Path:
    Image.fromarray(overlay(image, membrane, true_membrane=true_membrane), "RGB").save(path)
    return Path(path)
