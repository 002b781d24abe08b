"""DlibFaceResNet: dlib's 29-conv face descriptor network in PyTorch, with affine layers folded into convs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.dlib.network import DlibFormatError, DlibNet, check_face_resnet
from training.dlib.threshold import DLIB_UNIT_THRESHOLD, unit_threshold
from training.models.backbones import MODEL_BUILDERS
from training.models.spec import ModelSpec

ARCH = "dlib_resnet"
# (out channels, downsample) of each residual block, input to output (dlib's alevel4..alevel0).
BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),) + ((64, False),) * 3
    + ((128, True),) + ((128, False),) * 2
    + ((256, True),) + ((256, False),) * 2
    + ((256, True),)
)


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum has the larger size in every dimension and the smaller tensor is
    zero-padded at the high end (extra channels, bottom rows, right columns).

    a, b: (n, C?, H?, W?) -> (n, max C, max H, max W)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class ResidualBlock(nn.Module):
    """conv3x3 - relu - conv3x3, plus the input (a 2x2 average pool of it when downsampling).

    Downsampling blocks use stride 2 and no padding in their first conv, as dlib does."""

    def __init__(self, in_ch: int, out_ch: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_zero_padded(y, shortcut))


class DlibFaceResNet(nn.Module):
    """dlib_face_recognition_resnet_model_v1 as a PyTorch module.

    forward: (n, 3, 150, 150) float32, (rgb - mean) / 256 -> (n, 128) float32, L2-normalised
    when ``normalize`` (imported checkpoints since issue 16: ``metric = "cosine"``), else dlib's
    raw descriptors (dlib compares those by Euclidean distance with threshold 0.6).
    """

    def __init__(self, embedding_dim: int = 128, *, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        self.stem = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        blocks, ch = [], 32
        for out_ch, down in BLOCKS:
            blocks.append(ResidualBlock(ch, out_ch, down))
            ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(ch, embedding_dim, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, 150, 150) -> (n, 256) pooled features."""
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        return self.blocks(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.features(x))
        return F.normalize(z, dim=1) if self.normalize else z


def _fold(con, affine) -> tuple[torch.Tensor, torch.Tensor]:
    """con + affine (gamma * x + beta per channel) -> one conv's (weight, bias)."""
    n, (_, k_in, kh, kw) = con.attrs["num_filters"], con.attrs["filters_shape"]
    p = con.params
    weight = p[: n * k_in * kh * kw].reshape(n, k_in, kh, kw).astype(np.float64)
    bias = p[n * k_in * kh * kw:] if con.attrs["use_bias"] else np.zeros(n)
    gamma, beta = affine.params[:n].astype(np.float64), affine.params[n:].astype(np.float64)
    w = weight * gamma[:, None, None, None]
    b = bias.astype(np.float64) * gamma + beta
    return torch.from_numpy(w.astype(np.float32)), torch.from_numpy(b.astype(np.float32))


def state_dict_from_dlib(net: DlibNet) -> dict[str, torch.Tensor]:
    """The DlibFaceResNet state dict holding a parsed dlib face ResNet's weights."""
    check_face_resnet(net)
    layers = net.layers
    convs = [i for i, layer in enumerate(layers) if layer.kind == "con"]
    for i in convs:
        if layers[i + 1].kind != "affine" or layers[i + 1].attrs.get("mode", 0) != 0:
            raise DlibFormatError(f"layer {i}: a conv must be followed by a conv-mode affine")
    names = ["stem"] + [f"blocks.{b}.conv{j}" for b in range(len(BLOCKS)) for j in (1, 2)]
    state: dict[str, torch.Tensor] = {}
    for name, i in zip(names, convs, strict=True):
        state[f"{name}.weight"], state[f"{name}.bias"] = _fold(layers[i], layers[i + 1])
    fc = layers[-1]
    n_in, n_out = fc.attrs["num_inputs"], fc.attrs["num_outputs"]
    state["fc.weight"] = torch.from_numpy(fc.params[: n_in * n_out].reshape(n_in, n_out).T.copy())
    return state


def dlib_spec(net: DlibNet, *, name: str = "dlib_face_resnet_v1",
              threshold: float = DLIB_UNIT_THRESHOLD,
              face_align: str | None = "mtcnn5") -> ModelSpec:
    """A ModelSpec reproducing dlib's input normalisation: (rgb - mean) / 256 on 0..255 pixels
    equals (x - mean / 255) / (256 / 255) on our 0..1 tensors. ``metric = "cosine"``: the
    descriptors are L2-normalised and ``threshold`` is a distance between unit vectors
    (dlib's raw 0.6 converted: training.dlib.threshold)."""
    return ModelSpec(arch=ARCH, embedding_dim=128, input_size=net.input_size[0],
                     mean=tuple(m / 255.0 for m in net.input_mean), std=(256.0 / 255.0,) * 3,
                     metric="cosine", threshold=threshold, name=name, face_align=face_align)


def upgrade_raw_spec(spec: ModelSpec) -> ModelSpec:
    """A dlib checkpoint written before issue 16 (``metric = "euclidean"``: raw descriptors,
    threshold in raw units) -> the same model with unit descriptors and the converted
    threshold, so that Verify and eval decide as before (within training.dlib.threshold)."""
    if spec.arch != ARCH or spec.metric != "euclidean":
        return spec
    thr = None if spec.threshold is None else unit_threshold(spec.threshold)
    return replace(spec, metric="cosine", threshold=thr)


def build_dlib_resnet(spec: ModelSpec) -> nn.Module:
    if spec.input_size != 150 or spec.in_channels != 3:
        raise ValueError(f"{ARCH} takes 150x150 RGB input, spec says {spec.input_size}x"
                         f"{spec.input_size} with {spec.in_channels} channels")
    return DlibFaceResNet(spec.embedding_dim, normalize=spec.normalize)


MODEL_BUILDERS[ARCH] = build_dlib_resnet
