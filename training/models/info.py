"""Parameter counts and FLOPs of the registered backbones, for choosing one for a small server."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.models.backbones import BACKBONES, build_model
from training.models.spec import ModelSpec


def count_flops(model: torch.nn.Module, input_size: int, in_channels: int = 3) -> int:
    """Forward FLOPs of one (1, C, s, s) image (a multiply-add counts as 2)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, in_channels, input_size, input_size))
    return int(counter.get_total_flops())


def model_table(*, input_size: int, embedding_dim: int = 128,
                archs: list[str] | None = None) -> list[dict]:
    """[{arch, params, flops}] for each registered backbone with its embedding head."""
    rows = []
    for arch in archs or list(BACKBONES):
        torch.manual_seed(0)
        model = build_model(ModelSpec(arch=arch, embedding_dim=embedding_dim,
                                      input_size=input_size))
        rows.append({"arch": arch, "params": sum(p.numel() for p in model.parameters()),
                     "flops": count_flops(model, input_size)})
    return rows
