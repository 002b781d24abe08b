"""Self-describing checkpoints: primitives and tensors only, so weights_only loading works."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import training.dlib.model  # noqa: F401  registers "dlib_resnet" in MODEL_BUILDERS
from training.backbones import build_model
from training.spec import ModelSpec

FORMAT = "imgsim.checkpoint/1"


@dataclass
class Checkpoint:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # optimiser state, epoch, ...

    def build(self) -> nn.Module:
        """The network with these weights, in eval mode."""
        model = build_model(self.spec)
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write atomically (temp file + rename): a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "spec": ckpt.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "config": ckpt.config,
        "metrics": ckpt.metrics,
        "extra": ckpt.extra,
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(payload: dict, path: str | Path) -> Path:
    """torch.save to a temp file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an imgsim checkpoint (expected format {FORMAT})")
    return Checkpoint(
        spec=ModelSpec.from_dict(payload["spec"]),
        state_dict=payload["state_dict"],
        config=payload.get("config", {}),
        metrics=payload.get("metrics", {}),
        extra=payload.get("extra", {}),
    )


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
