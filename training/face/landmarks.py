"""dlib's shape predictor (ensemble of regression trees, Kazemi & Sullivan 2014) in numpy, read from its .dat."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from training.dlib.serialize import DlibFormatError, DlibReader
from training.face.chips import similarity_transform

log = logging.getLogger(__name__)
CACHE_ENV = "IMGSIM_CACHE"  # parsed predictors are kept here (default ~/.cache/imgsim)


@dataclass
class Cascade:
    """One cascade level: its feature pixels and its trees (all of the same depth).

    anchors: (p,) int landmark index of each feature pixel; deltas: (p, 2) float32 offsets
    in the initial shape's normalised frame; idx1, idx2: (t, s) int; thresh: (t, s) float32;
    leaves: (t, s + 1, 2 * parts) float32.
    """

    anchors: np.ndarray
    deltas: np.ndarray
    idx1: np.ndarray
    idx2: np.ndarray
    thresh: np.ndarray
    leaves: np.ndarray


def _read_tree(r: DlibReader) -> tuple[list, list]:
    splits = [(r.uint(), r.uint(), r.float()) for _ in range(r.uint())]
    leaves = [r.float_matrix().ravel() for _ in range(r.uint())]
    return splits, leaves


class ShapePredictor:
    """Landmarks inside a face box, as ``dlib.shape_predictor`` computes them.

    __call__(image (H, W[, 3]) uint8, box (left, top, right, bottom)) -> (parts, 2) float64.
    """

    def __init__(self, initial_shape: np.ndarray, cascades: list[Cascade]) -> None:
        self.initial_shape = initial_shape.astype(np.float32).reshape(-1, 2)
        self.cascades = cascades

    @property
    def num_parts(self) -> int:
        return len(self.initial_shape)

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str = "<bytes>") -> ShapePredictor:
        r = DlibReader(data, name=name)
        r.version({1}, "shape_predictor")
        initial = r.float_matrix().ravel()
        if initial.size == 0 or initial.size % 2:
            raise DlibFormatError(f"{name}: bad initial shape of {initial.size} values")
        forests = []
        for _ in range(r.uint()):
            forests.append([_read_tree(r) for _ in range(r.uint())])
        anchors = [np.array([r.uint() for _ in range(r.uint())]) for _ in range(r.uint())]
        deltas = []
        for _ in range(r.uint()):
            deltas.append(np.array([(r.float(), r.float()) for _ in range(r.uint())],
                                   np.float32).reshape(-1, 2))
        if not r.at_end:
            raise r._fail("trailing bytes after the shape predictor")
        if not (len(forests) == len(anchors) == len(deltas)):
            raise DlibFormatError(f"{name}: {len(forests)} forests but {len(anchors)} anchor sets")
        cascades = []
        for trees, anc, dl in zip(forests, anchors, deltas, strict=True):
            depth = {len(s) for s, _ in trees}
            if len(depth) != 1:
                raise DlibFormatError(f"{name}: trees of one cascade differ in size")
            cascades.append(Cascade(
                anchors=anc.astype(np.int64), deltas=dl,
                idx1=np.array([[s[0] for s in sp] for sp, _ in trees], np.int64),
                idx2=np.array([[s[1] for s in sp] for sp, _ in trees], np.int64),
                thresh=np.array([[s[2] for s in sp] for sp, _ in trees], np.float32),
                leaves=np.array([lv for _, lv in trees], np.float32)))
        return cls(initial, cascades)

    @classmethod
    def from_file(cls, path: str | Path) -> ShapePredictor:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"shape predictor not found: {path}")
        return cls.from_bytes(path.read_bytes(), name=str(path))

    def save_npz(self, path: str | Path) -> None:
        arrays = {"initial_shape": self.initial_shape}
        for i, c in enumerate(self.cascades):
            for name, arr in zip(Cascade.__dataclass_fields__, astuple(c), strict=True):
                arrays[f"{i}_{name}"] = arr
        np.savez(path, **arrays)

    @classmethod
    def load_npz(cls, path: str | Path) -> ShapePredictor:
        with np.load(path) as z:
            n = sum(1 for k in z.files if k.endswith("_anchors"))
            cascades = [Cascade(*(z[f"{i}_{f}"] for f in Cascade.__dataclass_fields__))
                        for i in range(n)]
            return cls(z["initial_shape"], cascades)

    @classmethod
    def load(cls, path: str | Path, *, cache_dir: str | Path | None = None) -> ShapePredictor:
        """``from_file`` with a cache: parsing millions of dlib floats in Python takes seconds,
        so the parsed arrays are kept as .npz under ``cache_dir`` ($IMGSIM_CACHE, default
        ~/.cache/imgsim), keyed by the file's SHA-256."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"shape predictor not found: {path}")
        data = path.read_bytes()
        cache = Path(cache_dir or os.environ.get(CACHE_ENV, Path.home() / ".cache" / "imgsim"))
        cached = cache / f"shape_predictor_{hashlib.sha256(data).hexdigest()[:16]}.npz"
        if cached.is_file():
            return cls.load_npz(cached)
        predictor = cls.from_bytes(data, name=str(path))
        try:
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache, suffix=".npz")
            os.close(fd)
            predictor.save_npz(tmp)
            os.replace(tmp, cached)
        except OSError as e:  # a read-only home is no reason to fail
            log.warning("could not cache the parsed shape predictor: %s", e)
        return predictor

    def __call__(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        img = np.asarray(image)
        if img.ndim == 3:  # dlib's get_pixel_intensity of an RGB pixel: integer mean
            img = (img[..., 0].astype(np.int32) + img[..., 1] + img[..., 2]) // 3
        h, w = img.shape[:2]
        left, top, right, bottom = (float(v) for v in box)
        scale = np.array([right - left, bottom - top])  # (0,0) -> tl corner, (1,1) -> br corner
        origin = np.array([left, top])
        shape = self.initial_shape.copy()
        for c in self.cascades:
            m, _ = similarity_transform(self.initial_shape, shape)  # reference -> current
            m = m.astype(np.float32)
            pts = c.deltas @ m.T + shape[c.anchors]
            pix = np.floor(pts.astype(np.float64) * scale + origin + 0.5).astype(np.int64)
            inside = (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h)
            values = np.zeros(len(pix), np.float32)
            values[inside] = img[pix[inside, 1], pix[inside, 0]]
            node = np.zeros(len(c.idx1), np.int64)
            rows = np.arange(len(c.idx1))
            n_splits = c.idx1.shape[1]
            while (node < n_splits).any():
                i1, i2 = c.idx1[rows, node], c.idx2[rows, node]
                left_branch = values[i1] - values[i2] > c.thresh[rows, node]
                node = np.where(left_branch, 2 * node + 1, 2 * node + 2)
            shape = shape + c.leaves[rows, node - n_splits].sum(0, dtype=np.float32).reshape(-1, 2)
        return np.floor(shape.astype(np.float64) * scale + origin + 0.5)
