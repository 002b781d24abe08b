"""LFW face verification: the pair files and the View 2 protocol (threshold chosen on the other folds)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from training.evaluation.calibration import best_accuracy_threshold, threshold_at_far

log = logging.getLogger(__name__)

IMAGES_DIR = "lfw-deepfunneled"
PAIRS_FILE = "pairs.txt"
TARGET_FAR = 1e-3


@dataclass(frozen=True)
class LfwPairs:
    """Verification pairs: image paths, genuine flag and fold (1..10 in View 2; 1 in View 1).

    ``same`` is (n,) bool, ``fold`` is (n,) int.
    """

    paths_a: list[str]
    paths_b: list[str]
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.same)

    def unique_paths(self) -> list[str]:
        """Every image the pairs name, once, sorted."""
        return sorted(set(self.paths_a) | set(self.paths_b))

    def select(self, folds: Sequence[int]) -> LfwPairs:
        keep = np.isin(self.fold, list(folds))
        return LfwPairs([p for p, k in zip(self.paths_a, keep, strict=True) if k],
                        [p for p, k in zip(self.paths_b, keep, strict=True) if k],
                        self.same[keep], self.fold[keep])


def person_of(path: str | Path) -> str:
    """The identity of an LFW image: its folder name."""
    return Path(path).parent.name


def _image(root: Path, name: str, number: str) -> str:
    return str(root / name / f"{name}_{int(number):04d}.jpg")


def read_lfw_pairs(pairs_file: str | Path, images_root: str | Path, *,
                   check_files: bool = True) -> LfwPairs:
    """Parse an LFW pair file.

    View 2 (``pairs.txt``) starts with ``<folds> <n>`` and holds, per fold, n genuine lines
    ``name i j`` then n impostor lines ``name1 i name2 j``. View 1 (``pairsDevTrain.txt``,
    ``pairsDevTest.txt``) starts with a single count n: n genuine then n impostor lines, all
    in fold 1. ``images_root`` is the ``lfw-deepfunneled`` folder.
    """
    pairs_file, root = Path(pairs_file), Path(images_root)
    if not pairs_file.is_file():
        raise FileNotFoundError(f"LFW pairs file not found: {pairs_file}")
    lines = [ln.split() for ln in pairs_file.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{pairs_file} is empty")
    header = lines[0]
    try:
        n_folds, per = (1, int(header[0])) if len(header) == 1 else (int(header[0]), int(header[1]))
    except ValueError:
        raise ValueError(f"{pairs_file}: bad header {' '.join(header)!r} "
                         "(expected '<folds> <pairs>' or '<pairs>')") from None
    body = lines[1:]
    if len(header) > 2 or len(body) != 2 * n_folds * per:
        raise ValueError(f"{pairs_file}: header says {n_folds} fold(s) x {per} genuine + {per} "
                         f"impostor pairs = {2 * n_folds * per} lines, found {len(body)}")
    paths_a, paths_b, same, fold = [], [], [], []
    for i, tok in enumerate(body):
        genuine = i % (2 * per) < per
        if genuine and len(tok) == 3:
            a, b = _image(root, tok[0], tok[1]), _image(root, tok[0], tok[2])
        elif not genuine and len(tok) == 4:
            a, b = _image(root, tok[0], tok[1]), _image(root, tok[2], tok[3])
        else:
            kind = "genuine 'name i j'" if genuine else "impostor 'name1 i name2 j'"
            raise ValueError(f"{pairs_file}:{i + 2}: expected a {kind} line, got {' '.join(tok)!r}")
        paths_a.append(a)
        paths_b.append(b)
        same.append(genuine)
        fold.append(i // (2 * per) + 1)
    pairs = LfwPairs(paths_a, paths_b, np.array(same, bool), np.array(fold, int))
    if check_files:
        missing = [p for p in pairs.unique_paths() if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} LFW image(s) named in {pairs_file.name} are "
                                    f"missing under {root}, first: {missing[0]}")
    return pairs


def equal_error_rate(dist: np.ndarray, same: np.ndarray) -> float:
    """The rate where false accepts equal false rejects, linearly interpolated on the ROC."""
    fpr, tpr, _ = roc_curve(np.asarray(same, bool), -np.asarray(dist, np.float64))
    fnr = 1 - tpr
    diff = fnr - fpr  # decreasing from 1 to -1 along the curve
    i = int(np.argmax(diff <= 0))
    if i == 0:
        return float(fpr[0])
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1)
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def roc_points(dist: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false accept rate, true accept rate) along the ROC; smaller distance = more similar."""
    fpr, tpr, _ = roc_curve(np.asarray(same, bool), -np.asarray(dist, np.float64))
    return fpr, tpr


def view2_accuracy(dist: np.ndarray, same: np.ndarray, fold: np.ndarray,
                   folds: Sequence[int] | None = None) -> dict[str, Any]:
    """The View 2 protocol on pair distances (n,), genuine flags (n,) and folds (n,).

    For each test fold f of ``folds`` (default: every fold present) the best-accuracy
    threshold is chosen on the other folds of ``folds`` and applied to f. ``accuracy_std``
    is the sample standard deviation over the test folds (ddof=1, as LFW's README defines
    it). AUC, TAR at FAR=1e-3 and EER are computed over all the pairs of ``folds``.
    """
    dist = np.asarray(dist, np.float64)
    same = np.asarray(same, bool)
    fold = np.asarray(fold, int)
    if not (len(dist) == len(same) == len(fold)):
        raise ValueError(f"dist, same and fold differ in length: {len(dist)}, {len(same)}, "
                         f"{len(fold)}")
    present = sorted(set(fold.tolist()))
    folds = present if folds is None else sorted(set(int(f) for f in folds))
    absent = [f for f in folds if f not in present]
    if absent:
        raise ValueError(f"fold(s) {absent} have no pairs (present: {present})")
    if len(folds) < 2:
        raise ValueError("the View 2 protocol needs at least two folds (the threshold is "
                         "chosen on the folds other than the test fold)")
    accs, thrs = [], []
    for f in folds:
        train = np.isin(fold, folds) & (fold != f)
        test = fold == f
        thr = best_accuracy_threshold(dist[train], same[train]).threshold
        accs.append(float(((dist[test] <= thr) == same[test]).mean()))
        thrs.append(thr)
    sel = np.isin(fold, folds)
    d, s = dist[sel], same[sel]
    return {
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs, ddof=1)),
        "fold_accuracies": accs,
        "thresholds": thrs,
        "folds": list(folds),
        "auc": float(roc_auc_score(s, -d)),
        "tar_at_far_1e-3": 1 - threshold_at_far(d, s, TARGET_FAR).frr,
        "eer": equal_error_rate(d, s),
        "n_pairs": int(sel.sum()),
    }


def resolve_lfw_root(data_root: str | Path) -> Path:
    """Accept the LFW folder itself (with pairs.txt) or the shared data folder above it."""
    root = Path(data_root)
    if (root / PAIRS_FILE).is_file():
        return root
    if (root / "lfw" / PAIRS_FILE).is_file():
        return root / "lfw"
    raise FileNotFoundError(f"no {PAIRS_FILE} in {root} or {root / 'lfw'} "
                            f"(expected the LFW folder with {PAIRS_FILE} and {IMAGES_DIR}/)")


def load_view2(data_root: str | Path) -> LfwPairs:
    root = resolve_lfw_root(data_root)
    return read_lfw_pairs(root / PAIRS_FILE, root / IMAGES_DIR)


def pair_distances_by_path(pairs: LfwPairs, paths: Sequence[str], emb: np.ndarray) -> np.ndarray:
    """Euclidean distance (n_pairs,) of each pair, given one embedding row per unique path."""
    row = {p: i for i, p in enumerate(paths)}
    a = emb[[row[p] for p in pairs.paths_a]]
    b = emb[[row[p] for p in pairs.paths_b]]
    return np.linalg.norm(a - b, axis=1)


def evaluate_lfw(embedder, data_root: str | Path, *, folds: Sequence[int] | None = None,
                 flip_tta: bool = False, batch_size: int = 64, num_workers: int = 2) -> dict:
    """Embed each image of pairs.txt (restricted to ``folds``) once with ``embedder``
    (a training.models.embedder.Embedder) and run ``view2_accuracy`` on Euclidean distances."""
    pairs = load_view2(data_root)
    if folds is not None:
        pairs = pairs.select(folds)
    paths = pairs.unique_paths()
    log.info("embedding %d LFW images for %d pairs", len(paths), len(pairs))
    kwargs = {"flip_tta": True} if flip_tta else {}
    emb = embedder.embed_paths(paths, batch_size=batch_size, num_workers=num_workers,
                               progress=True, **kwargs)
    dist = pair_distances_by_path(pairs, paths, emb)
    return view2_accuracy(dist, pairs.same, pairs.fold, folds)
