"""Optimisers and learning-rate schedules by name, built from a training config."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def _adamw(params, *, lr: float, weight_decay: float, momentum: float):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _adam(params, *, lr: float, weight_decay: float, momentum: float):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _sgd(params, *, lr: float, weight_decay: float, momentum: float):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                           nesterov=momentum > 0)


OPTIMIZERS = {"adamw": _adamw, "adam": _adam, "sgd": _sgd}


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float,
                    weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, momentum=momentum)


def _factor(name: str, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if name == "step":  # x0.1 at 2/3 of training (after warm-up)
        return 0.1 if t >= 2 / 3 else 1.0
    return 1.0


SCHEDULES = ("constant", "cosine", "step")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: linear warm-up over ``warmup_steps``, then constant, cosine decay
    to 0 at ``total_steps``, or a x0.1 step at two thirds."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _factor(name, s, total_steps, warmup_steps))
