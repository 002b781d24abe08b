"""The U-Net paper's pixel weight map (Ronneberger et al. 2015, eq. 2): class balance plus a
large weight on the thin membrane between two touching cells, so that the network learns to
keep them apart (gaps there merge cells and dominate the Rand error)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.segmentation.metrics import cell_labels


def border_weights(membrane: np.ndarray, *, w0: float = 10.0, sigma: float = 5.0,
                   balance: bool = True) -> np.ndarray:
    """(H, W) bool membrane mask -> (H, W) float32 weights

        w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

    with d1, d2 the distances to the nearest and second-nearest cell and w_c the class-balancing
    weight (inverse class frequency, normalised so that interior pixels weigh 1). The border
    term is only added on membrane pixels. Distances are computed in a window of about 4 sigma
    around each cell, beyond which the term is negligible (< exp(-8) w0).
    """
    membrane = membrane.astype(bool)
    h, w = membrane.shape
    cells = cell_labels(membrane)
    far = 4.0 * sigma
    d1 = np.full((h, w), far, np.float32)
    d2 = np.full((h, w), far, np.float32)
    pad = int(np.ceil(far))
    for k, sl in enumerate(ndimage.find_objects(cells), start=1):
        if sl is None:
            continue
        ys = slice(max(sl[0].start - pad, 0), min(sl[0].stop + pad, h))
        xs = slice(max(sl[1].start - pad, 0), min(sl[1].stop + pad, w))
        d = ndimage.distance_transform_edt(cells[ys, xs] != k).astype(np.float32)
        b1, b2 = d1[ys, xs], d2[ys, xs]
        closer = d < b1
        b2[:] = np.where(closer, b1, np.minimum(b2, d))
        b1[:] = np.where(closer, d, b1)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma ** 2))
    weights = np.ones((h, w), np.float32)
    if balance:
        frac = membrane.mean()
        if 0 < frac < 1:
            weights[membrane] = (1 - frac) / frac
    weights[membrane] += border[membrane]
    return weights
