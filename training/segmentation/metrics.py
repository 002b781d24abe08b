"""Segmentation metrics of the ISBI 2012 challenge: pixel error, foreground IoU, adapted Rand error."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage


def pixel_error(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of pixels whose class differs; (H, W) int arrays."""
    _same_shape(pred, true)
    return float(np.mean(pred != true))


def foreground_iou(pred: np.ndarray, true: np.ndarray, *, foreground: int = 1) -> float:
    """|pred == fg AND true == fg| / |pred == fg OR true == fg| (1.0 when both are empty)."""
    _same_shape(pred, true)
    p, t = pred == foreground, true == foreground
    union = np.logical_or(p, t).sum()
    return float(np.logical_and(p, t).sum() / union) if union else 1.0


def cell_labels(membrane: np.ndarray, *, connectivity: int = 1) -> np.ndarray:
    """Connected components of the non-membrane pixels: (H, W) bool membrane map -> (H, W) int
    labels, 0 on the membrane, 1..n for the cells. connectivity 1 = 4-neighbours, 2 = 8."""
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels, _ = ndimage.label(~membrane.astype(bool), structure=structure)
    return labels


def grow_cells(labels: np.ndarray) -> np.ndarray:
    """Give every membrane pixel (label 0) the label of its nearest cell: the cells grow until
    they meet in the middle of the predicted membranes. A thick predicted membrane then costs
    no singleton segments inside the true cells, so a lower threshold (thicker membranes,
    fewer gaps between cells) stops being a trade. Labels without any cell stay all 0."""
    if not labels.any():
        return labels
    _, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    return labels[iy, ix]


@dataclass(frozen=True)
class RandScores:
    error: float      # 1 - F-score
    precision: float  # split-free-ness: 1 when no true segment is merged with another
    recall: float     # merge-free-ness: 1 when no true segment is split

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def adapted_rand(seg: np.ndarray, gt: np.ndarray) -> RandScores:
    """Foreground-restricted Rand scores of the ISBI 2012 challenge (Arganda-Carreras et al. 2015).

    ``seg`` and ``gt`` are (H, W) non-negative integer segment labels. Pixels labelled 0 in ``gt``
    (its boundaries) are ignored. Pixels labelled 0 in ``seg`` (predicted boundary) are each
    their own singleton segment, as in the challenge's script. With n_ij the number of
    pixels in ground-truth segment i and predicted segment j:

        precision = sum_ij n_ij^2 / sum_j (sum_i n_ij)^2
        recall    = sum_ij n_ij^2 / sum_i (sum_j n_ij)^2
        error     = 1 - 2 * precision * recall / (precision + recall)
    """
    _same_shape(seg, gt)
    if seg.min() < 0 or gt.min() < 0:
        raise ValueError("segment labels must be non-negative")
    keep = gt.ravel() > 0
    a, b = gt.ravel()[keep].astype(np.int64), seg.ravel()[keep].astype(np.int64)
    if a.size == 0:
        raise ValueError("the ground truth has no foreground segment")
    singletons = int(np.sum(b == 0))
    in_seg = b > 0
    # contingency counts n_ij over the (true, predicted) pairs that occur
    pair = a[in_seg] * (int(b.max()) + 1) + b[in_seg]
    _, n_ij = np.unique(pair, return_counts=True)
    sum_ij = float(np.sum(n_ij.astype(np.float64) ** 2)) + singletons
    sum_a = float(np.sum(np.bincount(a).astype(np.float64) ** 2))
    sum_b = float(np.sum(np.bincount(b[in_seg]).astype(np.float64) ** 2)) + singletons
    precision, recall = sum_ij / sum_b, sum_ij / sum_a
    f = 2 * precision * recall / (precision + recall)
    return RandScores(1.0 - f, precision, recall)


@dataclass(frozen=True)
class SegScores:
    pixel_error: float
    foreground_iou: float
    rand_error: float
    rand_precision: float
    rand_recall: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def score_membranes(prob: np.ndarray, true_mask: np.ndarray, *, threshold: float = 0.5,
                    grow: bool = False) -> SegScores:
    """Score a membrane probability map (H, W) in [0, 1] against a (H, W) mask (1 = membrane).

    Rand error compares the cells (4-connected non-membrane components) of the thresholded
    prediction with the ground truth's cells; with ``grow``, the predicted cells first take
    over the predicted membrane (:func:`grow_cells`), a post-processing of the prediction.
    Pixel error and IoU are always those of the thresholded map."""
    _same_shape(prob, true_mask)
    pred = (prob >= threshold).astype(np.int64)
    cells = cell_labels(pred.astype(bool))
    r = adapted_rand(grow_cells(cells) if grow else cells, cell_labels(true_mask.astype(bool)))
    return SegScores(pixel_error(pred, true_mask), foreground_iou(pred, true_mask), r.error,
                     r.precision, r.recall)


def mean_scores(scores: list[SegScores]) -> SegScores:
    if not scores:
        raise ValueError("no scores to average")
    return SegScores(*(float(np.mean([getattr(s, f) for s in scores]))
                       for f in SegScores.__dataclass_fields__))


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
