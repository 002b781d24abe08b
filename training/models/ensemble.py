"""Ensembles of embedding networks in one checkpoint: member embeddings concatenated and re-normalised."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.checkpoint import Checkpoint, load_checkpoint
from training.evaluation.calibration import best_accuracy_threshold, pair_distances, sample_pairs
from training.models.backbones import MODEL_BUILDERS, build_model
from training.models.spec import ModelSpec

log = logging.getLogger(__name__)

ARCH = "ensemble"
# Fields that may differ between members; every other field is preprocessing (or metric),
# which one Embedder applies once for all members, so it must agree.
_PER_MEMBER = {"arch", "embedding_dim", "threshold", "name", "arch_kwargs"}


class EnsembleNet(nn.Module):
    """Several embedding networks behind one forward.

    forward: (n, C, H, W) -> (n, sum of member dims) float32: the members' embeddings side by
    side; for cosine ensembles each member's part is L2-normalised and then the whole row, so
    every member weighs the same (1/sqrt(M) of the norm) in the final distance.
    """

    def __init__(self, members: Sequence[nn.Module], *, normalize: bool) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [m(x) for m in self.members]
        if self.normalize:
            parts = [F.normalize(p, dim=1) for p in parts]
        z = torch.cat(parts, dim=1)
        return F.normalize(z, dim=1) if self.normalize else z


def member_specs(spec: ModelSpec) -> list[ModelSpec]:
    members = spec.arch_kwargs.get("members")
    if not members:
        raise ValueError("an ensemble spec needs arch_kwargs['members'] (a list of member specs)")
    return [ModelSpec.from_dict(m) for m in members]


def build_ensemble(spec: ModelSpec) -> EnsembleNet:
    """The (untrained) ensemble a spec with arch "ensemble" describes."""
    specs = member_specs(spec)
    total = sum(m.embedding_dim for m in specs)
    if total != spec.embedding_dim:
        raise ValueError(f"ensemble embedding_dim {spec.embedding_dim} != sum of member dims {total}")
    return EnsembleNet([build_model(m) for m in specs], normalize=spec.normalize)


MODEL_BUILDERS[ARCH] = build_ensemble


def ensemble_spec(members: Sequence[ModelSpec], *, name: str = "ensemble") -> ModelSpec:
    """The spec of an ensemble of these members; they must share preprocessing and metric."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    first = members[0]
    shared = [f.name for f in dataclasses.fields(ModelSpec) if f.name not in _PER_MEMBER]
    for i, m in enumerate(members[1:], 1):
        diff = [f for f in shared if getattr(m, f) != getattr(first, f)]
        if diff:
            raise ValueError(f"member {i} differs from member 0 in {', '.join(diff)}: ensemble "
                             "members must share preprocessing and metric")
    dicts = [dataclasses.replace(m, threshold=None).to_dict() for m in members]
    return dataclasses.replace(first, arch=ARCH, name=name, threshold=None,
                               embedding_dim=sum(m.embedding_dim for m in members),
                               arch_kwargs={"members": dicts})


def combine_checkpoints(members: Sequence[Checkpoint], *, name: str = "ensemble") -> Checkpoint:
    """One checkpoint holding every member's weights (``members.<i>.<key>``) and an ensemble
    spec; member configs and metrics are kept under ``config["members"]``."""
    spec = ensemble_spec([c.spec for c in members], name=name)
    state = {f"members.{i}.{k}": v for i, c in enumerate(members) for k, v in c.state_dict.items()}
    config = {"members": [{"name": c.spec.name, "config": c.config, "metrics": c.metrics}
                          for c in members]}
    ckpt = Checkpoint(spec, state, config=config)
    ckpt.build()  # fail here, not at load time, if the weights do not fit the spec
    return ckpt


def combine_checkpoint_files(paths: Sequence[str | Path], *, name: str = "ensemble") -> Checkpoint:
    return combine_checkpoints([load_checkpoint(p) for p in paths], name=name)


def calibrate_ensemble(ckpt: Checkpoint, paths: Sequence[str], labels: Sequence, *,
                       n_pairs: int = 2000, seed: int = 0) -> Checkpoint:
    """The ensemble's own distance threshold (its distances are not its members'), chosen for
    best accuracy on pairs sampled from held-out labelled images."""
    from training.models.embedder import Embedder

    emb = Embedder(ckpt.build(), ckpt.spec).embed_paths(list(paths))
    y = np.asarray(labels)
    i, j, same = sample_pairs(y, n_pairs=n_pairs, seed=seed)
    cal = best_accuracy_threshold(pair_distances(emb, i, j), same)
    log.info("ensemble threshold %.4f (accuracy %.3f on %d pairs)", cal.threshold, cal.accuracy,
             cal.n_pairs)
    return dataclasses.replace(ckpt, spec=ckpt.spec.with_threshold(cal.threshold),
                               metrics={**ckpt.metrics, "calibration": cal.to_dict()})


