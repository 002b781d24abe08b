import numpy as np
import pytest

from training.evaluation.calibration import best_accuracy_threshold, sample_pairs, threshold_at_far


def test_best_accuracy_separable():
    dist = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 1.0])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    c = best_accuracy_threshold(dist, same)
    assert c.accuracy == 1.0 and 0.3 < c.threshold < 0.8


def test_best_accuracy_overlap():
    dist = np.array([0.1, 0.5, 0.4, 0.9])
    same = np.array([1, 1, 0, 0], bool)
    c = best_accuracy_threshold(dist, same)
    assert c.accuracy == pytest.approx(0.75)


def test_threshold_at_far_bounds_false_accepts():
    rng = np.random.default_rng(0)
    dist = np.concatenate([rng.normal(0.5, 0.1, 1000), rng.normal(1.0, 0.1, 1000)])
    same = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    c = threshold_at_far(dist, same, far=0.01)
    assert c.far <= 0.01 and c.far > 0.005
    assert (dist[~same] <= c.threshold).mean() == pytest.approx(c.far)


def test_sample_pairs_balanced_and_correct():
    labels = np.repeat(np.arange(5), 4)
    i, j, same = sample_pairs(labels, n_pairs=100, seed=0)
    assert same.sum() == 50 and (~same).sum() == 50
    assert (labels[i][same] == labels[j][same]).all()
    assert (labels[i][~same] != labels[j][~same]).all()
    assert (i[same] != j[same]).all()
