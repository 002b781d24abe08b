"""Distances between embeddings, injected into losses and miners."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class LpDistance:
    """Euclidean distance (or its square). pairwise: (n, d), (m, d) -> (n, m)."""

    def __init__(self, *, squared: bool = False, eps: float = 1e-12) -> None:
        self.squared = squared
        self.eps = eps

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d2 = (x.pow(2).sum(1, keepdim=True) - 2 * x @ y.T + y.pow(2).sum(1)[None]).clamp_min(0)
        # sqrt has an infinite gradient at 0 (the diagonal): add eps inside.
        return d2 if self.squared else (d2 + self.eps).sqrt()

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d2 = (x - y).pow(2).sum(1)
        return d2 if self.squared else (d2 + self.eps).sqrt()


class CosineDistance:
    """1 - cosine similarity, in [0, 2]."""

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1 - (F.normalize(x, dim=1) * F.normalize(y, dim=1)).sum(1)


DISTANCES = {"l2": LpDistance, "l2sq": lambda: LpDistance(squared=True), "cosine": CosineDistance}


def get_distance(name: str):
    if name not in DISTANCES:
        raise ValueError(f"unknown distance {name!r}; valid: {', '.join(sorted(DISTANCES))}")
    return DISTANCES[name]()
