"""Overlap-tile inference (U-Net paper, Fig. 2): mirror-pad the image, predict overlapping tiles,
keep each tile's centre, so images of any size are segmented with full context at the borders."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.progress import progress as progress_bar


def tile_origins(length: int, tile: int, step: int) -> list[int]:
    """Start offsets so that tiles of ``tile`` pixels, ``step`` apart, cover [0, length)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


@torch.inference_mode()
def predict_probs(model: nn.Module, image: np.ndarray, *, tile: int = 256, margin: int = 32,
                  mean: float = 0.0, std: float = 1.0, batch_size: int = 4, tta: bool = False,
                  progress: bool = False) -> np.ndarray:
    """(H, W) float image in [0, 1] -> (K, H, W) float32 class probabilities.

    The image is mirror-padded by ``margin`` on every side; tiles of ``tile`` pixels overlap by
    2 * ``margin`` and only their central (tile - 2 * margin) pixels are kept. With ``tta`` the
    prediction is averaged over the 8 flips/rotations of each tile.
    """
    if tile <= 2 * margin:
        raise ValueError(f"tile ({tile}) must exceed twice the margin ({margin})")
    model.eval()
    h, w = image.shape
    core = tile - 2 * margin
    # pad so that the padded size is at least one tile in each direction
    ph, pw = max(h, core), max(w, core)
    x = torch.from_numpy(((image - mean) / std).astype(np.float32))[None, None]
    pads = (margin, margin + pw - w, margin, margin + ph - h)
    mode = "reflect" if max(pads[:2]) < w and max(pads[2:]) < h else "replicate"
    x = F.pad(x, pads, mode=mode)
    ys, xs = tile_origins(ph + 2 * margin, tile, core), tile_origins(pw + 2 * margin, tile, core)
    origins = [(y, xx) for y in ys for xx in xs]
    out: torch.Tensor | None = None
    bar = progress_bar(total=len(origins), desc="tiles", unit="tile", enabled=progress,
                       leave=False)
    for i in range(0, len(origins), batch_size):
        batch_o = origins[i:i + batch_size]
        batch = torch.cat([x[..., y:y + tile, xx:xx + tile] for y, xx in batch_o])
        probs = _tta_probs(model, batch) if tta else model(batch).softmax(1)
        if out is None:
            out = torch.zeros(probs.shape[1], ph, pw)
        for (y, xx), p in zip(batch_o, probs, strict=True):
            out[:, y:y + core, xx:xx + core] = p[:, margin:margin + core, margin:margin + core]
        bar.update(len(batch_o))
    bar.close()
    assert out is not None
    return out[:, :h, :w].numpy()


def _tta_probs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    acc = 0
    for k in range(4):
        for flip in (False, True):
            t = torch.rot90(batch, k, (2, 3))
            t = t.flip(3) if flip else t
            p = model(t).softmax(1)
            p = p.flip(3) if flip else p
            acc = acc + torch.rot90(p, -k, (2, 3))
    return acc / 8
