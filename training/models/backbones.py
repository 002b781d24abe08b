"""Embedding networks: the backbones (registered in training.models.registry), each followed by an
embedding head."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training.models import registry
from training.models.spec import ModelSpec


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool stages and global average pooling: fast on a 2-core CPU."""

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        chans = [in_channels, width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.out_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


def _torchvision_trunk(name: str, in_channels: int) -> tuple[nn.Module, int]:
    """A torchvision classifier with its classification layer removed (random init, no download)."""
    model = getattr(torchvision.models, name)(weights=None)
    if name.startswith("resnet"):
        feat = model.fc.in_features
        model.fc = nn.Identity()
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    elif name.startswith("mobilenet_v3"):
        feat = model.classifier[0].in_features
        model.classifier = nn.Identity()
        if in_channels != 3:
            old = model.features[0][0]
            model.features[0][0] = nn.Conv2d(in_channels, old.out_channels, 3, 2, 1, bias=False)
    else:  # pragma: no cover - registry only names the cases above
        raise ValueError(name)
    return model, feat


def _small_cnn(in_channels: int, **kw) -> tuple[nn.Module, int]:
    m = SmallCNN(in_channels, **kw)
    return m, m.out_features


def _tv(name: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(in_channels: int, **_kw) -> tuple[nn.Module, int]:
        return _torchvision_trunk(name, in_channels)

    return build


# The registry's backbone table, under the name the command line and the tests know.
BACKBONES: dict[str, Callable[..., tuple[nn.Module, int]]] = registry.BUILDERS["backbone"]
BACKBONES.update({
    "smallcnn": _small_cnn,
    "resnet18": _tv("resnet18"),
    "resnet34": _tv("resnet34"),
    "resnet50": _tv("resnet50"),
    "mobilenet_v3_small": _tv("mobilenet_v3_small"),
    "mobilenet_v3_large": _tv("mobilenet_v3_large"),
})


class EmbeddingNet(nn.Module):
    """backbone -> linear head -> (L2 normalisation when the metric is cosine).

    forward: (n, C, H, W) float32 -> (n, embedding_dim) float32.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, embedding_dim: int, normalize: bool):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feat_dim, embedding_dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.backbone(x))
        return F.normalize(z, dim=1) if self.normalize else z


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the (untrained) network a spec describes."""
    whole = registry.find("embedder", spec.arch)
    if whole is not None:
        return whole(spec)
    if spec.arch not in BACKBONES:
        valid = sorted(set(registry.names("backbone")) | set(registry.names("embedder")))
        raise ValueError(f"unknown architecture {spec.arch!r}; valid: {', '.join(valid)}")
    backbone, feat = BACKBONES[spec.arch](spec.in_channels, **spec.arch_kwargs)
    return EmbeddingNet(backbone, feat, spec.embedding_dim, spec.normalize)


# Whole-model builders for architectures that are not "backbone + head" (imported
# networks, ensembles): the registry's embedder table, filled in by the modules that define
# them (registry.LAZY names those modules).
MODEL_BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = registry.BUILDERS["embedder"]
