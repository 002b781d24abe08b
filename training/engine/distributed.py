"""Distributed data-parallel helpers: torchrun init, rank-sharded batches, rank-0 writes, sharded embedding passes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

log = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job. The default is the single-process case."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


SINGLE_PROCESS = DistInfo()


def init_from_env(backend: str | None = None, *,
                  env: Mapping[str, str] | None = None) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT). Without WORLD_SIZE > 1 this is a single process and nothing is initialised.

    backend: "gloo" (CPU) or "nccl" (one GPU per process); default nccl when CUDA is there.
    """
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: launch with torchrun")
    rank, local = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            raise ValueError(f"nccl needs one GPU per process: LOCAL_RANK={local} but only "
                             f"{torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    info = DistInfo(rank, world, local, backend)
    setup_rank_logging(info)
    log.info("rank %d/%d joined (%s)", rank, world, backend)
    return info


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def setup_rank_logging(info: DistInfo) -> None:
    """Only rank 0 logs below WARNING: one log stream, not world_size copies of it."""
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)


class TransparentDDP(nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that the rest of the code need not know about:

    - ``state_dict`` / ``load_state_dict`` are the wrapped module's (no ``module.`` prefix),
      so checkpoints written under DDP load anywhere;
    - a forward in eval mode or without gradients runs the module directly, with no
      collective, so rank 0 alone may evaluate (validation, calibration, embedding passes)
      without the other ranks having to join.
    """

    def forward(self, *args, **kwargs):
        if not self.training or not torch.is_grad_enabled():
            return self.module(*args, **kwargs)
        return super().forward(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """``TransparentDDP`` around the model when distributed: rank 0's weights are broadcast
    at construction, gradients are averaged across ranks in backward, BatchNorm buffers are
    broadcast from rank 0 at every training forward (see ``sync_buffers`` for after it)."""
    if not info.enabled:
        return model
    model = model.to(info.device)
    ids = [info.local_rank] if info.device.type == "cuda" else None
    return TransparentDDP(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (what checkpoints store: no ``module.`` prefixes)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each forward, so after the last training forward each
    rank holds statistics of its own batch; call this before evaluating or saving (SyncBatchNorm
    would avoid it but runs on GPUs only)."""
    if not info.enabled:
        return
    for buf in unwrap(model).buffers():
        if buf.dtype.is_floating_point or buf.dtype in (torch.int64, torch.int32):
            moved = buf.to(info.device)
            dist.broadcast(moved, src=0)
            if moved is not buf:
                buf.copy_(moved)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """The mean of a scalar over ranks (for logging a loss that every rank computed)."""
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(info: DistInfo, fn, *args, **kwargs):
    """Call ``fn`` on rank 0 only (checkpoints, logs, plots); other ranks get None."""
    return fn(*args, **kwargs) if info.is_main else None


def save_on_main(info: DistInfo, path: str | Path, ckpt) -> Path | None:
    """Write a checkpoint from rank 0 only; all ranks then wait so none reads a half-written file."""
    from training.checkpoint import save_checkpoint

    out = on_main(info, save_checkpoint, path, ckpt)
    barrier(info)
    return out


class DistributedSync:
    """Training-loop callback for DDP runs (put it first): at every epoch end all ranks take
    rank 0's BatchNorm statistics before anything evaluates or saves, and the epoch's row in
    ``state.history`` reports the loss averaged over ranks and the images/s of all ranks."""

    def __init__(self, info: DistInfo) -> None:
        self.info = info

    def on_epoch_end(self, state) -> None:
        sync_buffers(state.model, self.info)
        if state.history:
            row = state.history[-1]
            row["loss"] = all_reduce_mean(row["loss"], self.info)
            row["images_per_s"] = all_reduce_mean(row["images_per_s"], self.info) \
                * self.info.world_size
            row["world_size"] = self.info.world_size

    def on_train_end(self, state) -> None:
        sync_buffers(state.model, self.info)


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank r of w takes batches r, r+w, r+2w, ... of a batch sampler that draws the same stream
    on every rank (same seed), so shards are disjoint and together cover the stream.

    Every rank gets the same number of batches (the remainder is dropped): DDP hangs when one
    rank steps more often than another. Attributes not found here (``set_tree``,
    ``set_neighbours``, ...) are forwarded to the wrapped sampler.
    """

    def __init__(self, batch_sampler: Sampler[list[int]], *, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.inner, self.rank, self.world_size = batch_sampler, rank, world_size

    def __len__(self) -> int:
        return len(self.inner) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self)
        taken = 0
        for b, batch in enumerate(self.inner):
            if taken == n:
                return
            if b % self.world_size == self.rank:
                taken += 1
                yield batch

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __getattr__(self, name: str):
        if name == "inner":  # not yet set (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def shard(batch_sampler: Sampler[list[int]], info: DistInfo) -> Sampler[list[int]]:
    """The sampler itself in a single process; its rank's share under DDP."""
    if not info.enabled:
        return batch_sampler
    return ShardedBatchSampler(batch_sampler, rank=info.rank, world_size=info.world_size)


@torch.inference_mode()
def embed_dataset(model: nn.Module, dataset: Dataset, *, info: DistInfo = SINGLE_PROCESS,
                  indices: Sequence[int] | None = None, batch_size: int = 128,
                  num_workers: int = 0) -> np.ndarray:
    """Embed ``dataset[i][0]`` for every i (or every i in ``indices``), in order, with the model
    in eval mode: (n, d) float32, identical on every rank.

    Under DDP each rank embeds every world_size-th item and the pieces are all-gathered, so a
    dataset-wide pass (tree rebuild, hard-negative mining) costs 1/world_size per rank.
    """
    net = unwrap(model)
    sync_buffers(net, info)  # every rank must embed its shard with the same BN statistics
    was_training = net.training
    net.eval()
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    mine = idx[info.rank::info.world_size]
    loader = DataLoader(Subset(dataset, mine.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    device = next(net.parameters()).device
    chunks = [net(x.to(device)).float() for x, *_ in loader]
    if was_training:
        net.train()
    local = torch.cat(chunks) if chunks else None
    if not info.enabled:
        return local.cpu().numpy() if local is not None else np.zeros((0, 0), np.float32)
    # all_gather needs equal shapes: pad every shard to the largest one
    per_rank = [len(idx[r::info.world_size]) for r in range(info.world_size)]
    dim = torch.tensor([local.shape[1] if local is not None else 0], device=info.device)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    pad = torch.zeros(max(per_rank), int(dim.item()), device=info.device)
    if local is not None:
        pad[:len(local)] = local.to(info.device)
    parts = [torch.zeros_like(pad) for _ in range(info.world_size)]
    dist.all_gather(parts, pad)
    out = np.zeros((len(idx), int(dim.item())), np.float32)
    for r, part in enumerate(parts):
        out[r::info.world_size] = part[:per_rank[r]].cpu().numpy()
    return out
