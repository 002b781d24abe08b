"""The one registry of network builders, by kind and architecture name: backbone trunks,
whole embedding networks (ensembles, dlib's ResNet) and segmenters (U-Net, SegNet).

The module that defines a network registers it in its kind's table; an architecture whose
module nobody has imported yet is listed in ``LAZY`` and imported the first time it is asked
for, so that loading a checkpoint needs no import from the caller."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

KINDS = ("backbone", "embedder", "segmenter")
# kind -> architecture -> builder. "backbone": (in_channels, **arch_kwargs) -> (trunk, feature
# dim); "embedder": ModelSpec -> network (architectures that are not backbone + head);
# "segmenter": the network class, called with its keyword arguments.
BUILDERS: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}
LAZY: dict[tuple[str, str], str] = {
    ("embedder", "ensemble"): "training.models.ensemble",
    ("embedder", "dlib_resnet"): "training.dlib.model",
}


def find(kind: str, arch: str) -> Callable[..., Any] | None:
    """The builder of ``arch`` in ``kind``'s table (importing its module if it is lazy), or None."""
    table = BUILDERS[kind]
    if arch not in table and (kind, arch) in LAZY:
        importlib.import_module(LAZY[(kind, arch)])  # registers itself on import
    return table.get(arch)


def names(kind: str) -> list[str]:
    """Every architecture of a kind, registered or lazy, sorted."""
    return sorted(set(BUILDERS[kind]) | {a for k, a in LAZY if k == kind})
