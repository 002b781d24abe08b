"""MTCNN face detector (Zhang et al. 2016), batched in PyTorch: boxes, scores and 5 landmarks.

A compact port of facenet-pytorch's ``detect_face`` (MIT, Timothy Esler). Its P/R/O-Net
weights are read from the facenet-pytorch wheel, installed without its dependencies (it pins
torch<2.3 and numpy<2, so it cannot be an ordinary dependency; the Makefile and Dockerfile run
``pip install --no-deps facenet-pytorch==2.6.0``, and nothing here imports it), or from the
folder ``IMGSIM_MTCNN_WEIGHTS`` names (pnet.pt, rnet.pt, onet.pt). See docs/MODELS.md.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate
from torchvision.ops import batched_nms

WEIGHTS_ENV = "IMGSIM_MTCNN_WEIGHTS"
WEIGHTS_PACKAGE = "facenet-pytorch==2.6.0"


def weights_dir() -> Path:
    """The folder of MTCNN's pnet.pt, rnet.pt and onet.pt: ``$IMGSIM_MTCNN_WEIGHTS``, else the
    installed facenet_pytorch package's data folder (found, not imported)."""
    import importlib.util
    import os

    if os.environ.get(WEIGHTS_ENV):
        where = Path(os.environ[WEIGHTS_ENV])
    else:
        spec = importlib.util.find_spec("facenet_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"MTCNN's weights are not installed: pip install --no-deps {WEIGHTS_PACKAGE} "
                f"(make install does), or set {WEIGHTS_ENV} to a folder with pnet.pt, rnet.pt "
                "and onet.pt")
        where = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [n for n in ("pnet.pt", "rnet.pt", "onet.pt") if not (where / n).is_file()]
    if missing:
        raise FileNotFoundError(f"MTCNN weights {', '.join(missing)} not found in {where}")
    return where


class PNet(nn.Module):
    """12x12 proposal net, fully convolutional: (n, 3, H, W) -> box offsets, face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), 1)


class RNet(nn.Module):
    """24x24 refinement net: (n, 3, 24, 24) -> box offsets (n, 4), probabilities (n, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).reshape(len(x), -1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), 1)


class ONet(nn.Module):
    """48x48 output net: (n, 3, 48, 48) -> offsets (n, 4), landmarks (n, 10), probs (n, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2 = nn.Linear(256, 2), nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).reshape(len(x), -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), 1)


def _load(net: nn.Module, name: str) -> nn.Module:
    net.load_state_dict(torch.load(weights_dir() / f"{name}.pt", weights_only=True))
    return net.eval().requires_grad_(False)


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, best first by score: ``boxes`` (n, 4) float32 (l, t, r, b),
    ``scores`` (n,), ``points`` (n, 5, 2) (x, y): left eye, right eye, nose, mouth corners."""

    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _square(b: torch.Tensor) -> torch.Tensor:
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = torch.maximum(w, h)
    x0, y0 = b[:, 0] + w / 2 - side / 2, b[:, 1] + h / 2 - side / 2
    return torch.stack([x0, y0, x0 + side, y0 + side], 1)


def _regress(b: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    wh = (b[:, 2:4] - b[:, 0:2] + 1).repeat(1, 2)
    return b + reg * wh


class MTCNN:
    """Batched MTCNN. Each image is resized so that its shorter side is ``side`` px before
    detecting (None: as it is), and ``min_face`` (px, at that side) sets the smallest face the
    pyramid looks for: with the defaults a face narrower than 1/8 of the shorter side is not
    looked for. Upscaling matters on small photos: faces in 64-96 px photos are near P-Net's
    12 px floor at their own size; downscaling big photos keeps the pyramid (the cost) small.
    ``top_k``: how many of each image's best R-Net boxes O-Net scores (None: all);
    ``distinct_iou``: before that cut, R-Net boxes overlapping a better one by more than this
    IoU are dropped (None: not), so that the few O-Net sees are different faces rather than
    two boxes on the same one; without it, a photo whose subject R-Net scores below a
    bystander's two boxes loses its subject (14 of View 1's 4,992 photos chose another main
    face than O-Net on every box would; 1 with 0.3);
    ``pnet_top_k``: how many of each image's best P-Net proposals R-Net scores (None: all; about
    35 per LFW photo at the defaults, and R-Net on them was half of the detector's time).
    ``retry_side``: images where nothing was found are detected once more at this shorter side
    (None: no second pass), so a face smaller than the first pass looks for still has a chance
    at a cost paid only on misses.
    __call__(list of (H, W, 3) uint8 RGB) -> list of Detections, in the images' coordinates."""

    def __init__(self, *, side: int | None = 128, min_face: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, top_k: int | None = 2, distinct_iou: float | None = 0.3,
                 pnet_top_k: int | None = 10, retry_side: int | None = 256) -> None:
        self.side, self.min_face, self.thresholds, self.factor = side, min_face, thresholds, factor
        self.top_k, self.pnet_top_k, self.retry_side = top_k, pnet_top_k, retry_side
        self.distinct_iou = distinct_iou
        self.pnet, self.rnet, self.onet = _load(PNet(), "pnet"), _load(RNet(), "rnet"), _load(ONet(), "onet")
        self._lock = threading.Lock()  # torch modules are fine to share; the lock keeps
        # one batch's intra-op threads from fighting another's on small machines

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        found = self._at_side(images, self.side)
        missed = [k for k, d in enumerate(found) if not len(d)]
        if missed and self.retry_side and self.retry_side != self.side:
            for k, d in zip(missed, self._at_side([images[k] for k in missed], self.retry_side),
                            strict=True):
                found[k] = d
        return found

    def _at_side(self, images: list[np.ndarray], side: int | None) -> list[Detections]:
        scaled, factors = [], []
        for rgb in images:
            f = side / min(rgb.shape[:2]) if side else 1.0
            if f != 1.0:
                rgb = cv2.resize(rgb, (round(rgb.shape[1] * f), round(rgb.shape[0] * f)),
                                 interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
            scaled.append(np.ascontiguousarray(rgb))
            factors.append(f)
        with self._lock, torch.inference_mode():
            found = self._detect(scaled)
        return [Detections(d.boxes / f, d.scores, d.points / f) for d, f in zip(found, factors, strict=True)]

    def _proposals(self, group: list[int], images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1 on same-size images: candidate boxes (k, 5) with score, their image indices."""
        x = torch.from_numpy(np.stack([images[i] for i in group])).permute(0, 3, 1, 2).float()
        h, w = x.shape[2:]
        scale, side = 12.0 / self.min_face, min(h, w) * 12.0 / self.min_face
        boxes, inds = [], []
        while side >= 12:
            reg, prob = self.pnet(_normalise(interpolate(x, size=(int(h * scale + 1), int(w * scale + 1)),
                                                         mode="area")))
            mask = prob[:, 1] >= self.thresholds[0]
            at = mask.nonzero()
            cells = at[:, 1:].flip(1).float()  # (x, y) of each 12 px window, stride 2
            q1, q2 = ((2 * cells + 1) / scale).floor(), ((2 * cells + 12) / scale).floor()
            b = torch.cat([q1, q2], 1)
            score = prob[:, 1][mask]
            r = reg.permute(0, 2, 3, 1)[mask]
            keep = batched_nms(b, score, at[:, 0], 0.5)
            boxes.append(torch.cat([b[keep], score[keep, None], r[keep]], 1))
            inds.append(torch.as_tensor(group)[at[keep, 0]])
            scale *= self.factor
            side *= self.factor
        b, i = torch.cat(boxes), torch.cat(inds)
        keep = batched_nms(b[:, :4], b[:, 4], i, 0.7)
        b, i = b[keep], i[keep]
        wh = (b[:, 2:4] - b[:, 0:2]).repeat(1, 2)
        return torch.cat([_square(b[:, :4] + b[:, 5:9] * wh), b[:, 4:5]], 1), i

    @staticmethod
    def _crops(images: list[np.ndarray], boxes: torch.Tensor, inds: torch.Tensor, size: int):
        """Each box cut from its image (clipped to it, as MTCNN does) and resized to size^2."""
        out, ok = [], []
        for (left, top, right, bottom), k in zip(boxes.trunc().int().tolist(), inds.tolist(), strict=True):
            img = images[k]
            h, w = img.shape[:2]
            x0, y0, x1, y1 = max(left, 1) - 1, max(top, 1) - 1, min(right, w), min(bottom, h)
            if x1 - x0 < 1 or y1 - y0 < 1:
                ok.append(False)
                continue
            out.append(cv2.resize(img[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA))
            ok.append(True)
        if not out:
            return torch.zeros(0, 3, size, size), torch.as_tensor(ok, dtype=torch.bool)
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
        # channels_last: about 2x faster convolutions and pooling on the CPU here
        return _normalise(x).contiguous(memory_format=torch.channels_last), torch.as_tensor(ok, dtype=torch.bool)

    def _detect(self, images: list[np.ndarray]) -> list[Detections]:
        groups: dict[tuple[int, int], list[int]] = {}
        for k, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(k)
        parts = [self._proposals(g, images) for g in groups.values()]
        boxes, inds = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        points = torch.zeros(0, 5, 2)
        if self.pnet_top_k and len(boxes):
            keep = _top_k(boxes[:, 4], inds, self.pnet_top_k)
            boxes, inds = boxes[keep], inds[keep]
        if len(boxes):  # stage 2: refine
            x, ok = self._crops(images, boxes[:, :4], inds, 24)
            boxes, inds = boxes[ok], inds[ok]
            reg, prob = self.rnet(x)
            keep = prob[:, 1] > self.thresholds[1]
            boxes = torch.cat([boxes[keep, :4], prob[keep, 1:2]], 1)
            inds, reg = inds[keep], reg[keep]
            pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
            boxes, inds, reg = boxes[pick], inds[pick], reg[pick]
            boxes = torch.cat([_square(_regress(boxes[:, :4], reg)), boxes[:, 4:5]], 1)
            if self.top_k:  # O-Net costs 30x R-Net a box: only each image's best few go on
                if self.distinct_iou:
                    d = batched_nms(boxes[:, :4], boxes[:, 4], inds, self.distinct_iou)
                    keep = d[_top_k(boxes[d, 4], inds[d], self.top_k)]
                else:
                    keep = _top_k(boxes[:, 4], inds, self.top_k)
                boxes, inds = boxes[keep], inds[keep]
        if len(boxes):  # stage 3: output boxes and landmarks
            x, ok = self._crops(images, boxes[:, :4], inds, 48)
            boxes, inds = boxes[ok], inds[ok]
            reg, lm, prob = self.onet(x)
            keep = prob[:, 1] > self.thresholds[2]
            boxes, inds, reg, lm = boxes[keep, :4], inds[keep], reg[keep], lm[keep]
            score = prob[keep, 1]
            wh = boxes[:, 2:4] - boxes[:, 0:2] + 1
            points = torch.stack([wh[:, None, 0] * lm[:, :5] + boxes[:, None, 0] - 1,
                                  wh[:, None, 1] * lm[:, 5:] + boxes[:, None, 1] - 1], 2)
            boxes = _regress(boxes, reg)
            pick = _nms_min(boxes, score, inds, 0.7)
            boxes, inds, points = torch.cat([boxes, score[:, None]], 1)[pick], inds[pick], points[pick]
        out = []
        b, p, i = boxes.numpy(), points.numpy(), inds.numpy()
        for k in range(len(images)):
            sel = np.flatnonzero(i == k) if len(b) else np.zeros(0, int)
            order = sel[np.argsort(-b[sel, 4])] if len(sel) else sel
            out.append(Detections(b[order, :4].astype(np.float32).reshape(-1, 4),
                                  b[order, 4].astype(np.float32),
                                  p[order].astype(np.float32).reshape(-1, 5, 2)))
        return out


def _top_k(scores: torch.Tensor, inds: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores of each image."""
    order = torch.argsort(-scores)
    rank = torch.zeros_like(inds)
    seen: dict[int, int] = {}
    for j in order.tolist():
        g = int(inds[j])
        rank[j] = seen.get(g, 0)
        seen[g] = rank[j].item() + 1
    return torch.nonzero(rank < k).flatten()


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, inds: torch.Tensor, threshold: float) -> torch.Tensor:
    """NMS per image where overlap is intersection over the smaller box (MTCNN's last stage)."""
    b, s, g = boxes.numpy(), scores.numpy(), inds.numpy()
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    keep = []
    for k in np.unique(g):
        order = np.flatnonzero(g == k)
        order = order[np.argsort(s[order])]
        while len(order):
            i, rest = order[-1], order[:-1]
            keep.append(i)
            w = np.maximum(0, np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]) + 1)
            h = np.maximum(0, np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]) + 1)
            order = rest[w * h / np.minimum(area[i], area[rest]) <= threshold]
    return torch.as_tensor(keep, dtype=torch.long)
