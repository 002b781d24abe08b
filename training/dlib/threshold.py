"""dlib's raw Euclidean threshold as a distance between L2-normalised descriptors (issue 16)."""

from __future__ import annotations

import numpy as np

# dlib's own threshold between raw 128-d descriptors ("same person" at or under it).
DLIB_RAW_THRESHOLD = 0.6
# The distance between unit descriptors that best reproduces the raw-0.6 verdicts, chosen on
# LFW View 1 pairsDevTrain (2,200 pairs, lfw-fixed chips): the same verdict on 99.1% of them
# and on 98.5% of pairsDevTest (1,000 pairs, not used to choose it); accuracy against the
# truth 97.5% raw -> 97.8% unit (DevTrain), 97.6% -> 97.5% (DevTest). Measured with
# `benchmarks/dlib_unit_threshold.py --align lfw-fixed`. There is no exact map:
# |a/|a| - b/|b|| depends on both norms, not only on |a - b|, so pairs near the threshold can
# change verdict (about 1 in 70 here).
DLIB_UNIT_THRESHOLD = 0.4216
# Median norm of dlib's raw descriptors on those 4,992 LFW images: a raw threshold t other
# than 0.6 is converted as t / DLIB_MEDIAN_NORM (exact if every norm were the median; 0.6 /
# 1.426 = 0.4208 gives the same verdicts on 98.6% of pairsDevTest).
DLIB_MEDIAN_NORM = 1.426


def unit_threshold(raw_threshold: float) -> float:
    """A raw-descriptor distance threshold of the dlib model -> the one between unit vectors."""
    if abs(raw_threshold - DLIB_RAW_THRESHOLD) < 1e-9:
        return DLIB_UNIT_THRESHOLD
    return float(raw_threshold) / DLIB_MEDIAN_NORM


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) float32 unit rows."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def agreeing_unit_threshold(raw_a: np.ndarray, raw_b: np.ndarray,
                            raw_threshold: float) -> tuple[float, float]:
    """The threshold on unit-vector distances whose verdicts agree most with ``raw_threshold``
    on raw distances, over pairs (raw_a[i], raw_b[i]) of (n, d) raw descriptors. Returns
    (threshold, fraction of pairs with the same verdict). Among equally good thresholds, the
    one nearest ``raw_threshold / median norm`` (exact when every norm is the median)."""
    same_raw = np.linalg.norm(raw_a - raw_b, axis=1) <= raw_threshold
    d = np.linalg.norm(l2_normalise(raw_a) - l2_normalise(raw_b), axis=1).astype(np.float64)
    norm = float(np.median(np.linalg.norm(np.concatenate([raw_a, raw_b]), axis=1)))
    order = np.argsort(d)
    ds, ss = d[order], same_raw[order]
    # threshold between ds[k-1] and ds[k]: the first k pairs are called the same
    agree = np.concatenate([[0], np.cumsum(ss)]) + \
        (np.count_nonzero(~ss) - np.concatenate([[0], np.cumsum(~ss)]))
    edges = np.concatenate([[0.0], ds, [ds[-1] + 1.0]])
    best = np.flatnonzero(agree == agree.max())
    lo, hi = edges[best], edges[best + 1]  # threshold interval of each best k
    prior = raw_threshold / norm
    cand = np.clip(prior, lo, np.nextafter(hi, lo))
    k = int(np.argmin(np.abs(cand - prior)))
    thr = cand[k] if lo[k] < prior < hi[k] else (lo[k] + hi[k]) / 2
    return float(thr), float(agree[best[k]] / len(d))
