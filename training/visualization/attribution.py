"""Reconstructions of one unit's activation in input space: DeconvNet (Zeiler & Fergus 2014),
guided backpropagation (Springenberg et al. 2015) and the plain gradient.

All three are a backward pass from the chosen unit to the image; they differ only at the ReLUs:

- gradient:   grad_in = grad_out * [x > 0]                   (forward mask)
- deconvnet:  grad_in = relu(grad_out)                         (rectify the signal, ignore x)
- guided:     grad_in = relu(grad_out) * [x > 0]                (both)

Max-pooling's backward routes the signal to the recorded argmax positions (the "switches" of
DeconvNet's unpooling) and a convolution's backward applies its transposed filters, exactly
the DeconvNet's other two operations, so autograd does the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from training.visualization.models import LayerCapture, named_layer

METHODS = ("gradient", "deconvnet", "guided")


class _ReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, mode: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.mode = mode
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        if ctx.mode == "deconvnet":
            return grad.clamp(min=0), None
        g = grad * (x > 0)
        if ctx.mode == "guided":
            g = g.clamp(min=0)
        return g, None


class ModedReLU(nn.Module):
    """A ReLU whose backward pass follows ``mode`` (gradient | deconvnet | guided)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in METHODS:
            raise ValueError(f"unknown method {mode!r}; valid: {', '.join(METHODS)}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReLUFunction.apply(x, self.mode)


@contextmanager
def relu_backward(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily replace every ``nn.ReLU`` module of ``model`` by ``ModedReLU(mode)``.

    (ReLUs applied functionally inside a forward(), not as modules, are not replaced; the
    project's backbones and torchvision's ResNets/MobileNets use modules.)
    """
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                replaced.append((parent, name, child))
                setattr(parent, name, ModedReLU(mode))
    try:
        yield model
    finally:
        for parent, name, child in replaced:
            setattr(parent, name, child)


@dataclass(frozen=True)
class Reconstruction:
    image_grad: torch.Tensor  # (C, H, W): the signal that reached the input
    unit: tuple[int, int, int]  # (channel, y, x) in the layer's output; y = x = -1 for vectors
    activation: float


def reconstruct(model: nn.Module, x: torch.Tensor, *, layer: str, channel: int = -1,
                method: str = "guided") -> Reconstruction:
    """Project one unit of ``layer`` back to the image (1, C, H, W).

    ``layer`` is a module name ("" for the model's output); ``channel`` < 0 picks the channel
    with the strongest activation. As in Zeiler & Fergus, only the strongest position of that
    channel's map is kept; all other activations of the layer are zeroed before going down.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (1, C, H, W), got {tuple(x.shape)}")
    x = x.detach().clone().requires_grad_(True)
    with relu_backward(model, method):
        if layer:
            with LayerCapture(named_layer(model, layer)) as cap:
                out = model(x)
            act = cap.output
        else:
            act = out = model(x)
    assert act is not None
    a = act[0]
    if channel < 0:
        channel = int((a.amax(dim=(1, 2)) if a.dim() == 3 else a).argmax())
    if channel >= a.shape[0]:
        raise ValueError(f"layer {layer or 'output'} has {a.shape[0]} channels, not {channel + 1}")
    if a.dim() == 3:
        flat = int(a[channel].argmax())
        y, xx = divmod(flat, a.shape[2])
        unit, value = (channel, y, xx), a[channel, y, xx]
    else:
        unit, value = (channel, -1, -1), a[channel]
    (grad,) = torch.autograd.grad(value, x)
    del out
    return Reconstruction(grad[0].detach(), unit, float(value.detach()))
