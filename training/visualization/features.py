"""First-layer filters and feature maps of chosen layers."""

from __future__ import annotations

import torch
from torch import nn

from training.visualization.models import LayerCapture, first_conv, named_layer


def first_layer_filters(model: nn.Module) -> tuple[str, torch.Tensor]:
    """(name, (out, in, kh, kw) weights) of the first Conv2d."""
    name, conv = first_conv(model)
    return name, conv.weight.detach().clone()


@torch.inference_mode()
def feature_maps(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named layers for one image (1, C, H, W) -> {name: (C', h, w)}."""
    caps = {n: LayerCapture(named_layer(model, n)) for n in layers}
    for c in caps.values():
        c.__enter__()
    try:
        model(x)
    finally:
        for c in caps.values():
            c.__exit__(None, None, None)
    out = {}
    for n, c in caps.items():
        if c.output is None or c.output.dim() != 4:
            raise ValueError(f"layer {n} has no spatial output")
        out[n] = c.output[0].detach()
    return out
