"""Models to look inside: loading from checkpoints, named layers, images in and out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from training.checkpoint import load_checkpoint
from training.data.transforms import eval_transform
from training.models.spec import ModelSpec


@dataclass
class LoadedModel:
    """A network in eval mode with the preprocessing its checkpoint prescribes.

    ``classes`` is set for classifiers (checkpoints whose config says task=classifier): then the
    outputs are class scores (logits); otherwise they are embeddings.
    """

    model: nn.Module
    spec: ModelSpec
    classes: list[str] | None = None

    @property
    def is_classifier(self) -> bool:
        return self.classes is not None

    def tensor(self, image: Image.Image | str | Path) -> torch.Tensor:
        """An image (or its path) -> (1, C, S, S) preprocessed batch."""
        if not isinstance(image, Image.Image):
            with Image.open(image) as im:
                image = im.copy()
        return eval_transform(self.spec)(image)[None]

    def to_image(self, x: torch.Tensor) -> np.ndarray:
        """(1, C, H, W) or (C, H, W) preprocessed tensor -> (H, W, 3) float in [0, 1]."""
        return tensor_to_image(x, self.spec)


def load_model(checkpoint: str | Path) -> LoadedModel:
    ckpt = load_checkpoint(checkpoint)
    classes = ckpt.config.get("classes") if ckpt.config.get("task") == "classifier" else None
    model = ckpt.build()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model, ckpt.spec, list(classes) if classes else None)


def tensor_to_image(x: torch.Tensor, spec: ModelSpec) -> np.ndarray:
    x = x.detach().float().cpu()
    if x.dim() == 4:
        x = x[0]
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    img = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def named_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        convs = [n for n in conv_relu_layers(model)]
        raise ValueError(f"no layer {name!r} in the model; layers with activations include: "
                         f"{', '.join(convs[:30])}")
    return modules[name]


def conv_relu_layers(model: nn.Module) -> list[str]:
    """Names of the Conv2d and ReLU modules, in forward-definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.ReLU) and n]


def relu_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.ReLU) and n]


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return n, m
    raise ValueError("the model has no Conv2d layer")


class _StopForward(Exception):
    pass


class LayerCapture:
    """Forward hook that keeps a layer's output (with its graph): ``with LayerCapture(m) as c:
    model(x); c.output``. The output is cloned because later in-place ReLUs would change it.
    With ``stop=True`` the forward pass ends at the layer (the layers above are not run)."""

    def __init__(self, module: nn.Module, *, stop: bool = False) -> None:
        self.module = module
        self.stop = stop
        self.output: torch.Tensor | None = None
        self._handle = None

    def _hook(self, _m, _inp, out) -> None:
        self.output = out.clone()
        if self.stop:
            raise _StopForward

    def __enter__(self) -> LayerCapture:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()


def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Forward ``x`` and return the named layer's output (n, C, h, w), graph attached."""
    with LayerCapture(named_layer(model, layer), stop=True) as cap:
        try:
            model(x)
        except _StopForward:
            pass
    assert cap.output is not None
    return cap.output
