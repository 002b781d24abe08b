"""Verification thresholds: chosen on validation pairs, stored with the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    threshold: float  # distance <= threshold means "same"
    accuracy: float
    far: float  # false accept rate at this threshold
    frr: float
    n_pairs: int

    def to_dict(self) -> dict[str, float]:
        return {"threshold": self.threshold, "accuracy": self.accuracy, "far": self.far,
                "frr": self.frr, "n_pairs": self.n_pairs}


def _candidates(dist: np.ndarray) -> np.ndarray:
    d = np.unique(dist)
    mids = (d[:-1] + d[1:]) / 2 if len(d) > 1 else d
    return np.concatenate([[d[0] - 1e-6], mids, [d[-1] + 1e-6]])


def best_accuracy_threshold(dist: np.ndarray, same: np.ndarray) -> Calibration:
    """The distance threshold maximising accuracy on these pairs (same=True means a genuine pair).

    O(n log n): sort once, count genuine/impostor pairs at or below each candidate.
    """
    dist = np.asarray(dist, np.float64)
    same = np.asarray(same, bool)
    if len(dist) == 0 or same.all() or (~same).all():
        raise ValueError("calibration needs both genuine and impostor pairs")
    cand = _candidates(dist)
    order = np.sort(dist[same]), np.sort(dist[~same])
    tp = np.searchsorted(order[0], cand, side="right")  # genuine accepted
    fp = np.searchsorted(order[1], cand, side="right")  # impostors accepted
    n_pos, n_neg = len(order[0]), len(order[1])
    acc = (tp + (n_neg - fp)) / (n_pos + n_neg)
    i = int(np.argmax(acc))
    return Calibration(float(cand[i]), float(acc[i]), float(fp[i] / n_neg),
                       float(1 - tp[i] / n_pos), int(len(dist)))


def threshold_at_far(dist: np.ndarray, same: np.ndarray, far: float) -> Calibration:
    """The largest threshold whose false accept rate on these pairs is <= ``far``."""
    dist = np.asarray(dist, np.float64)
    same = np.asarray(same, bool)
    imp = np.sort(dist[~same])
    gen = np.sort(dist[same])
    allowed = int(np.floor(far * len(imp)))  # impostors we may accept
    thr = imp[allowed] - 1e-6 if allowed < len(imp) else imp[-1] + 1e-6
    tp = np.searchsorted(gen, thr, side="right")
    fp = np.searchsorted(imp, thr, side="right")
    acc = (tp + len(imp) - fp) / len(dist)
    return Calibration(float(thr), float(acc), float(fp / len(imp)), float(1 - tp / len(gen)),
                       int(len(dist)))


def sample_pairs(labels: np.ndarray, *, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced genuine/impostor index pairs (i, j, same) from a labelled set."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by = {c: np.where(labels == c)[0] for c in np.unique(labels)}
    multi = [c for c, v in by.items() if len(v) >= 2]
    if not multi or len(by) < 2:
        raise ValueError("need a class with two images and at least two classes")
    half = n_pairs // 2
    cls = rng.choice(multi, size=half)
    gi = np.array([rng.choice(by[c], 2, replace=False) for c in cls])
    i1 = rng.integers(0, len(labels), size=4 * half)
    i2 = rng.integers(0, len(labels), size=4 * half)
    keep = labels[i1] != labels[i2]
    ii, jj = i1[keep][:half], i2[keep][:half]
    i = np.concatenate([gi[:, 0], ii])
    j = np.concatenate([gi[:, 1], jj])
    same = np.concatenate([np.ones(len(gi), bool), np.zeros(len(ii), bool)])
    return i, j, same


def pair_distances(emb: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.linalg.norm(emb[i] - emb[j], axis=1)
