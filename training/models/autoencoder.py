"""The convolutional autoencoder / VAE whose encoder is an embedding backbone (pre-trained
without labels by training.pretraining.autoencoder)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.models.backbones import BACKBONES, SmallCNN


def spatial_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map before global pooling: (n, C, H, W) -> (n, c, h, w)."""
    if isinstance(backbone, SmallCNN):
        return backbone.features(x)
    if hasattr(backbone, "layer4"):  # torchvision ResNet
        b = backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))
    if hasattr(backbone, "features"):  # torchvision MobileNetV3
        return backbone.features(x)
    raise ValueError(f"no spatial feature map known for {type(backbone).__name__}")


def _up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ConvAutoencoder(nn.Module):
    """Encoder = an embedding backbone (``BACKBONES[arch]``, up to its last feature map) plus a
    1x1 convolution to ``latent_channels``; decoder = nearest upsampling + conv stages back to
    the input size. With ``variational=True`` the 1x1 convolution gives a mean and a
    log-variance per latent cell and training samples z = mu + sigma * eps (Kingma & Welling).

    forward: (n, C, S, S) normalised images -> (reconstruction (n, C, S, S), mu, logvar or None).
    """

    def __init__(self, arch: str = "smallcnn", *, in_channels: int = 3, input_size: int = 64,
                 latent_channels: int = 64, variational: bool = False,
                 arch_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if arch not in BACKBONES:
            raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(sorted(BACKBONES))}")
        self.arch, self.arch_kwargs = arch, dict(arch_kwargs or {})
        self.in_channels, self.input_size = in_channels, input_size
        self.variational = variational
        self.backbone, _ = BACKBONES[arch](in_channels, **self.arch_kwargs)
        with torch.no_grad():
            self.backbone.eval()
            feat = spatial_features(self.backbone, torch.zeros(1, in_channels, input_size, input_size))
            self.backbone.train()
        c, h = feat.shape[1], feat.shape[2]
        self.to_latent = nn.Conv2d(c, latent_channels * (2 if variational else 1), 1)
        ups = max(0, math.ceil(math.log2(input_size / h)))
        chans = [max(16, min(256, latent_channels * 2) >> i) for i in range(ups + 1)]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, chans[0], 3, padding=1),
                                   nn.ReLU(inplace=True)]
        layers += [_up_block(chans[i], chans[i + 1]) for i in range(ups)]
        layers.append(nn.Conv2d(chans[-1], in_channels, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.to_latent(spatial_features(self.backbone, x))
        if self.variational:
            mu, logvar = z.chunk(2, dim=1)
            return mu, logvar.clamp(-10, 10)
        return z, None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        if out.shape[-1] != self.input_size:
            out = F.interpolate(out, size=(self.input_size, self.input_size), mode="bilinear",
                                align_corners=False)
        return out

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        z = mu
        if self.variational and self.training:
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z), mu, logvar

    def loss(self, x: torch.Tensor, *, beta: float = 1.0) -> tuple[torch.Tensor, float, float]:
        """(total, reconstruction, KL): mean squared error per pixel; for the VAE the KL
        divergence to N(0, I) per latent element, weighted by ``beta`` (both per element, so
        beta=1 balances them whatever the image and latent sizes)."""
        recon, mu, logvar = self(x)
        rec = F.mse_loss(recon, x)
        if not self.variational:
            return rec, rec.item(), 0.0
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean()
        return rec + beta * kl, rec.item(), kl.item()
