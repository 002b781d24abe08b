"""Optimising the input image: gradient ascent on a unit (with jitter, blur and decay),
Deep Dream with octaves, and Gatys style transfer. One machinery: an objective of the
image, its gradient, a step, regularisers."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.visualization.models import LayerCapture, layer_output, named_layer

Objective = Callable[[torch.Tensor], torch.Tensor]  # (1, C, H, W) -> scalar to maximise


def channel_objective(model: nn.Module, layer: str, channel: int) -> Objective:
    """Mean activation of one channel of a layer."""
    named_layer(model, layer)

    def f(x: torch.Tensor) -> torch.Tensor:
        a = layer_output(model, layer, x)
        if channel >= a.shape[1]:
            raise ValueError(f"layer {layer} has {a.shape[1]} channels, not {channel + 1}")
        return a[:, channel].mean()
    return f


def output_objective(model: nn.Module, index: int) -> Objective:
    """One output of the model: a class score (logit) of a classifier, or an embedding unit."""
    def f(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        if index >= out.shape[1]:
            raise ValueError(f"the model has {out.shape[1]} outputs, not {index + 1}")
        return out[:, index].mean()
    return f


def direction_objective(model: nn.Module, direction: torch.Tensor) -> Objective:
    """Projection of the embedding on a direction (e.g. another image's embedding): the image
    the model finds most like that direction. direction: (d,)."""
    d = F.normalize(direction.flatten().float(), dim=0)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (model(x).flatten(1) @ d).mean()
    return f


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (n, C, H, W) with reflection padding."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@dataclass(frozen=True)
class AscentConfig:
    steps: int = 200
    lr: float = 0.05
    jitter: int = 4           # random translation (pixels) before each step, undone after
    blur_sigma: float = 0.5   # Gaussian blur of the image ...
    blur_every: int = 4       # ... every this many steps (0: never)
    decay: float = 1e-3       # L2 decay of the image each step
    clamp: float = 3.0        # keep pixels within +-clamp (normalised units)
    seed: int = 0


def gradient_ascent(objective: Objective, init: torch.Tensor, cfg: AscentConfig = AscentConfig(),
                    *, progress: Callable[[float, str], None] | None = None
                    ) -> tuple[torch.Tensor, list[float]]:
    """Maximise ``objective`` over the image, starting from ``init`` (1, C, H, W).

    Each step: roll the image by a random jitter, take a normalised gradient step, roll back,
    decay towards zero, and every ``blur_every`` steps blur it: high frequencies that only the
    gradient likes are suppressed. Returns the image and the objective before each step
    (plus the final value)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x = init.detach().clone()
    history: list[float] = []
    for step in range(cfg.steps):
        dy, dx = (torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=gen).tolist()
                  if cfg.jitter > 0 else (0, 0))
        xs = torch.roll(x, (dy, dx), (2, 3)).requires_grad_(True)
        value = objective(xs)
        (g,) = torch.autograd.grad(value, xs)
        history.append(float(value.detach()))
        g = torch.roll(g, (-dy, -dx), (2, 3))
        x = x + cfg.lr * g / (g.abs().mean() + 1e-8)
        x = x * (1 - cfg.decay)
        if cfg.blur_every and (step + 1) % cfg.blur_every == 0:
            x = gaussian_blur(x, cfg.blur_sigma)
        x = x.clamp(-cfg.clamp, cfg.clamp)
        if progress and step % 10 == 0:
            progress(step / cfg.steps, f"step {step}/{cfg.steps}: objective {history[-1]:.4f}")
    with torch.no_grad():
        history.append(float(objective(x)))
    return x.detach(), history


@dataclass(frozen=True)
class DreamConfig:
    octaves: int = 3
    octave_scale: float = 1.4
    steps_per_octave: int = 10
    lr: float = 0.02
    jitter: int = 8
    clamp: float = 3.0
    seed: int = 0


def activation_energy(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Deep Dream's objective: mean squared activation of a layer (1/2 ||a||^2 / size)."""
    return layer_output(model, layer, x).pow(2).mean() / 2


def deep_dream(model: nn.Module, image: torch.Tensor, layer: str,
               cfg: DreamConfig = DreamConfig(), *,
               progress: Callable[[float, str], None] | None = None) -> torch.Tensor:
    """Amplify what ``layer`` sees in ``image`` (1, C, H, W), from the coarsest octave to the
    finest: at each scale ascend the activation energy, then carry the added detail up to the
    next scale (the original's pixels are re-added there, so detail accumulates)."""
    named_layer(model, layer)
    h, w = image.shape[-2:]
    sizes = [(max(8, round(h / cfg.octave_scale ** i)), max(8, round(w / cfg.octave_scale ** i)))
             for i in reversed(range(cfg.octaves))]
    detail = torch.zeros_like(F.interpolate(image, size=sizes[0], mode="bilinear",
                                            align_corners=False))
    asc = AscentConfig(steps=cfg.steps_per_octave, lr=cfg.lr, jitter=cfg.jitter, blur_every=0,
                       decay=0.0, clamp=cfg.clamp, seed=cfg.seed)
    for i, size in enumerate(sizes):
        base = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
        dreamed, _ = gradient_ascent(lambda x: activation_energy(model, layer, x), base + detail,
                                     asc)
        detail = dreamed - base
        if progress:
            progress((i + 1) / len(sizes), f"octave {i + 1}/{len(sizes)} at {size[0]}x{size[1]}")
    return (image + F.interpolate(detail, size=(h, w), mode="bilinear",
                                  align_corners=False)).detach()


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) -> (n, C, C) feature correlations, divided by C * H * W."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


@dataclass(frozen=True)
class StyleConfig:
    steps: int = 150
    lr: float = 0.05
    content_weight: float = 1.0
    style_weight: float = 1e4
    tv_weight: float = 1e-3


@dataclass(frozen=True)
class StyleResult:
    image: torch.Tensor           # (1, C, H, W)
    content_loss: list[float]
    style_loss: list[float]


def _features(model: nn.Module, layers: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    caps = [LayerCapture(named_layer(model, n)) for n in layers]
    for c in caps:
        c.__enter__()
    try:
        model(x)
    finally:
        for c in caps:
            c.__exit__(None, None, None)
    return {n: c.output for n, c in zip(layers, caps, strict=True)}


def style_transfer(model: nn.Module, content: torch.Tensor, style: torch.Tensor, *,
                   content_layer: str, style_layers: list[str],
                   cfg: StyleConfig = StyleConfig(),
                   progress: Callable[[float, str], None] | None = None) -> StyleResult:
    """Gatys et al. 2016: from the content image, minimise
    content_weight * ||F_l(x) - F_l(content)||^2 + style_weight * sum_l ||G_l(x) - G_l(style)||^2
    (+ total variation) with Adam on the pixels. content, style: (1, C, H, W) (any sizes)."""
    if not style_layers:
        raise ValueError("style transfer needs at least one style layer")
    layers = list(dict.fromkeys([content_layer, *style_layers]))
    with torch.no_grad():
        target_c = _features(model, [content_layer], content)[content_layer]
        target_s = {n: gram_matrix(f) for n, f in _features(model, style_layers, style).items()}
    x = content.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    c_hist, s_hist = [], []
    for step in range(cfg.steps):
        feats = _features(model, layers, x)
        c_loss = F.mse_loss(feats[content_layer], target_c)
        s_loss = sum(F.mse_loss(gram_matrix(feats[n]), target_s[n]) for n in style_layers)
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()
        loss = cfg.content_weight * c_loss + cfg.style_weight * s_loss + cfg.tv_weight * tv
        opt.zero_grad()
        loss.backward()
        opt.step()
        c_hist.append(float(c_loss.detach()))
        s_hist.append(float(s_loss.detach()))
        if progress and step % 10 == 0:
            progress(step / cfg.steps, f"step {step}: content {c_hist[-1]:.4g} "
                                       f"style {s_hist[-1]:.4g}")
    return StyleResult(x.detach(), c_hist, s_hist)
