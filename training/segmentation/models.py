"""Segmentation networks: U-Net (skip concatenation) and SegNet (pooling indices), each with a
choice of decoder upsampling (nearest interpolation, max-unpooling + conv, transposed conv)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.models import registry

UPSAMPLING = ("nearest", "unpool", "transposed")


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU layers (same padding): (n, cin, H, W) -> (n, cout, H, W)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class NearestUp(nn.Module):
    """Nearest-neighbour x2 interpolation then a 3x3 conv: (n, cin, H, W) -> (n, cout, 2H, 2W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size[-2:] if size else None,
                                       scale_factor=None if size else 2, mode="nearest"))


class UnpoolUp(nn.Module):
    """Max-unpooling with the encoder's pooling indices (switches), then a 3x3 conv.

    Unpooling puts each value back at the position its max came from and zeros elsewhere;
    the conv densifies the sparse map. (n, cin, H, W) + indices -> (n, cout, 2H, 2W).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        if indices is None:
            raise ValueError("unpool upsampling needs the encoder's pooling indices")
        return self.conv(self.unpool(x, indices, output_size=size))


class TransposedUp(nn.Module):
    """2x2 stride-2 transposed convolution: (n, cin, H, W) -> (n, cout, 2H, 2W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        y = self.up(x)
        if size is not None and y.shape[-2:] != size[-2:]:  # odd input sizes
            y = F.pad(y, (0, size[-1] - y.shape[-1], 0, size[-2] - y.shape[-2]))
        return y


UPSAMPLERS: dict[str, Callable[[int, int], nn.Module]] = {
    "nearest": NearestUp,
    "unpool": UnpoolUp,
    "transposed": TransposedUp,
}


def make_upsampler(name: str, cin: int, cout: int) -> nn.Module:
    if name not in UPSAMPLERS:
        raise ValueError(f"unknown upsampling {name!r}; valid: {', '.join(sorted(UPSAMPLERS))}")
    return UPSAMPLERS[name](cin, cout)


class _ReduceThenUnpool(nn.Module):
    """A 1x1 conv to the pooled level's width, then unpool + 3x3 conv: the pooling indices
    were taken on ``cout`` channels, so the unpooled tensor must have that many."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(cin, cout, 1)
        self.up = UnpoolUp(cout, cout)

    def forward(self, x, indices=None, size=None):
        return self.up(self.reduce(x), indices, size)


def decoder_upsampler(name: str, cin: int, cout: int) -> nn.Module:
    """The upsampling of one decoder level, from ``cin`` deep channels to ``cout``."""
    if name == "unpool":
        return _ReduceThenUnpool(cin, cout)
    return make_upsampler(name, cin, cout)


class Encoder(nn.Module):
    """``depth`` conv blocks each followed by 2x2 max-pooling that keeps its indices,
    then a bottleneck block. Channel widths double at each level: width, 2*width, ..."""

    def __init__(self, in_channels: int, width: int, depth: int) -> None:
        super().__init__()
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.blocks = nn.ModuleList(conv_block(c_in, c_out) for c_in, c_out
                                    in zip([in_channels, *chans[:depth - 1]], chans[:depth],
                                           strict=True))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.bottleneck = conv_block(chans[depth - 1], chans[depth])
        self.chans = chans

    def forward(self, x: torch.Tensor):
        """-> (bottleneck features, [skip features per level], [pool indices], [pre-pool sizes])"""
        skips, indices, sizes = [], [], []
        for block in self.blocks:
            x = block(x)
            skips.append(x)
            sizes.append(x.shape)
            x, idx = self.pool(x)
            indices.append(idx)
        return self.bottleneck(x), skips, indices, sizes


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with same-padding convs and batch norm.

    Each decoder level upsamples, concatenates the encoder features of the same resolution
    (the skip connection) along channels, and applies a conv block.
    forward: (n, in_channels, H, W) -> (n, num_classes, H, W) logits (H, W multiples of
    2**depth are fastest; other sizes work).
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 2, width: int = 16,
                 depth: int = 4, upsampling: str = "transposed") -> None:
        super().__init__()
        self.encoder = Encoder(in_channels, width, depth)
        c = self.encoder.chans
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.ups.append(decoder_upsampler(upsampling, c[level + 1], c[level]))
            self.decoders.append(conv_block(2 * c[level], c[level]))
        self.head = nn.Conv2d(c[0], num_classes, 1)
        self.upsampling = upsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, skips, indices, sizes = self.encoder(x)
        for up, dec, skip, idx, size in zip(self.ups, self.decoders, reversed(skips),
                                            reversed(indices), reversed(sizes), strict=True):
            y = dec(torch.cat([up(y, idx, size), skip], dim=1))
        return self.head(y)


class SegNet(nn.Module):
    """SegNet (Badrinarayanan et al. 2017): an encoder-decoder without skip concatenation.

    With ``upsampling="unpool"`` (the paper's design) each decoder level max-unpools with the
    indices of the matching encoder pooling, so boundaries land where the encoder's maxima
    were. forward: (n, in_channels, H, W) -> (n, num_classes, H, W) logits.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 2, width: int = 16,
                 depth: int = 4, upsampling: str = "unpool") -> None:
        super().__init__()
        self.encoder = Encoder(in_channels, width, depth)
        c = self.encoder.chans
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.ups.append(decoder_upsampler(upsampling, c[level + 1], c[level]))
            self.decoders.append(conv_block(c[level], c[level]))
        self.head = nn.Conv2d(c[0], num_classes, 1)
        self.upsampling = upsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _skips, indices, sizes = self.encoder(x)
        for up, dec, idx, size in zip(self.ups, self.decoders, reversed(indices),
                                      reversed(sizes), strict=True):
            y = dec(up(y, idx, size))
        return self.head(y)


# The registry's segmenter table.
ARCHITECTURES: dict[str, type[nn.Module]] = registry.BUILDERS["segmenter"]
ARCHITECTURES.update({"unet": UNet, "segnet": SegNet})


@dataclass(frozen=True)
class SegModelSpec:
    """Everything needed to rebuild a segmenter; stored in its checkpoint."""

    arch: str = "unet"
    upsampling: str = "transposed"
    width: int = 16
    depth: int = 4
    in_channels: int = 1
    num_classes: int = 2
    class_names: tuple[str, ...] = ("interior", "membrane")
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown segmentation architecture {self.arch!r}; "
                             f"valid: {', '.join(sorted(ARCHITECTURES))}")
        if self.upsampling not in UPSAMPLERS:
            raise ValueError(f"unknown upsampling {self.upsampling!r}; "
                             f"valid: {', '.join(sorted(UPSAMPLERS))}")
        if len(self.class_names) != self.num_classes:
            raise ValueError("class_names needs one name per class")
        if self.depth < 1 or self.width < 1:
            raise ValueError("depth and width must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegModelSpec:
        d = dict(d)
        d["class_names"] = tuple(d.get("class_names", ("interior", "membrane")))
        return cls(**d)


def build_segmenter(spec: SegModelSpec) -> nn.Module:
    return ARCHITECTURES[spec.arch](in_channels=spec.in_channels, num_classes=spec.num_classes,
                                    width=spec.width, depth=spec.depth, upsampling=spec.upsampling)
