"""The training loop: a Siamese (shared-weight) embedding network, a batch source, a miner and a loss.

Two layers:

- ``fit(state, loader, loss_fn, miner, epochs=..., callbacks=...)`` is the loop itself. Every
  part is injected already built: ``loader`` yields ``(images (n, C, H, W), labels (n,))``
  batches (its ``batch_sampler.set_epoch(epoch)`` is called when it has one); ``miner(emb,
  labels)`` returns pair or triplet indices; ``loss_fn(emb, labels, indices)`` returns a
  scalar and keeps ``last_active`` / ``last_total``. Nothing in it switches on a name.
- ``train(cfg, samples=None, *, callbacks=(), loss_fn=None, miner=None, batch_sampler=None)``
  builds those parts from a ``TrainConfig`` (data split, backbone, augmentation, sampler,
  optimiser, LR schedule), adds the standard callbacks and writes ``<out>/model.pt``.

Callbacks (``training.engine.callbacks.Callback``) get the shared ``TrainState`` (model, spec,
optimizer, scheduler, dataset, loader, epoch, step, loss, active_fraction, grad_norm,
history, metrics, best, stop) at ``on_train_start``, ``on_epoch_start``, ``on_step_end``,
``on_epoch_end`` and ``on_train_end``. They run in the order given; callbacks passed to
``train`` run before the standard ones, so an ``on_epoch_start`` that re-mines the dataset
or swaps sampler state sees the model before the epoch's first step. Standard ones:
validation (Recall@1 on held-out classes, ``best.pt``), ``last.pt`` every epoch (for
``resume``), ``metrics.csv``, ``norms.csv`` (per-layer weight/gradient norms), TensorBoard
under ``tb/`` and ``loss.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from training.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_pretrained_backbone,
    save_checkpoint,
)
from training.data.datasets import FORMATS, DatasetSplit, load_split
from training.data.folders import LabelledImages, Sample, split_by_class
from training.data.transforms import AUGMENTATIONS, eval_transform, get_augmentation
from training.distances import DISTANCES, get_distance
from training.engine.callbacks import (
    Callback,
    CallbackList,
    EpochCheckpoint,
    LossCurve,
    MetricsCSV,
    NormLog,
    TensorBoard,
    TrainState,
    Validation,
)
from training.engine.distributed import (
    DistributedSync,
    barrier,
    init_from_env,
    shard,
    unwrap,
    wrap_model,
)
from training.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from training.engine.refresh_callbacks import (
    REFRESH_SAMPLERS,
    build_refresh_sampler,
    refresh_callbacks,
)
from training.evaluation.calibration import (
    best_accuracy_threshold,
    pair_distances,
    sample_pairs,
    threshold_at_far,
)
from training.losses import DEFAULT_MINER, LOSSES, get_loss
from training.miners.in_batch import MINERS
from training.models.backbones import build_model
from training.models.embedder import Embedder
from training.models.ensemble import calibrate_ensemble, combine_checkpoint_files
from training.models.spec import METRICS, ModelSpec
from training.pretraining.autoencoder import init_backbone_from_autoencoder
from training.progress import progress
from training.samplers.pk import PairSampler, PKSampler

log = logging.getLogger(__name__)

SAMPLERS = ("pk", "pairs", *REFRESH_SAMPLERS)


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    format: str = "folder"  # folder | cub | lfw (see datasets.FORMATS)
    lfw_train_folds: tuple[int, ...] = (1, 2, 3, 4, 5)  # lfw: train on these folds' people
    arch: str = "smallcnn"
    arch_kwargs: dict[str, Any] | None = None  # e.g. {"width": 16} for smallcnn
    embedding_dim: int = 128
    input_size: int = 64
    resize_size: int | None = None  # default: input_size x the dataset's resize ratio
    metric: str = "cosine"  # cosine: L2-normalised embeddings
    loss: str = "triplet"
    miner: str | None = None  # default: the loss's own (see losses.DEFAULT_MINER)
    margin: float | None = None  # default: 1.0 contrastive, 0.2 triplet
    squared_margin: bool = False  # contrastive: max(0, m² - d²) instead of max(0, m - d)²
    distance: str = "l2"
    sampler: str = "pk"  # pk: P classes x K images; pairs: genuine/impostor pairs
    positive_fraction: float = 0.5  # pairs sampler
    epochs: int = 5
    steps_per_epoch: int | None = None
    p: int = 16
    k: int = 4
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float | None = 5.0
    val_fraction: float = 0.2  # of the training classes, held out for validation
    val_metric: str = "recall@1"
    val_every: int = 1
    val_max_images: int | None = 2000
    target_far: float = 1e-3  # second calibrated threshold, stored in metrics
    calibration_pairs: int = 2000
    num_workers: int = 2
    seed: int = 0
    pretrained: str | None = None
    init: str | None = None  # start from this checkpoint: its architecture, preprocessing, weights
    name: str = "model"
    augment: bool = True
    augmentation: str | None = None  # default: the dataset's (crop for objects, face for LFW)
    tensorboard: bool = True
    norms_every: int = 50
    resume: bool = False
    device: str = "cpu"
    # tree / mining samplers and the htl loss (training.engine.refresh_callbacks); under torchrun: DDP
    neighbours: int = 3  # hierarchical / hard-negatives: near classes per anchor class
    tree_levels: int = 8  # class tree levels (htl loss, hierarchical sampler)
    refresh_every: int = 0  # rebuild the tree / re-mine every N steps (0: every epoch)
    refresh_max_per_class: int | None = None  # images per class embedded per refresh
    mining_k: int = 10  # hard-negatives: nearest other-class neighbours mined per image
    init_from_autoencoder: str | None = None  # `imgsim pretrain` output for the backbone
    ensemble: int = 1  # > 1: that many members (seeds seed, seed+1, ...) in one checkpoint

    def __post_init__(self) -> None:
        for value, registry, what in [
            (self.format, FORMATS, "format"), (self.arch, None, "arch"),
            (self.loss, LOSSES, "loss"), (self.miner, MINERS, "miner"),
            (self.distance, DISTANCES, "distance"), (self.sampler, SAMPLERS, "sampler"),
            (self.optimizer, OPTIMIZERS, "optimizer"), (self.schedule, SCHEDULES, "schedule"),
            (self.metric, METRICS, "metric"), (self.augmentation, AUGMENTATIONS, "augmentation"),
        ]:
            if registry is not None and value is not None and value not in registry:
                raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(sorted(registry))}")
        if self.epochs < 1 or self.p < 2 or self.k < 1:
            raise ValueError("epochs must be >= 1, p >= 2 and k >= 1")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_loss_and_miner(cfg: TrainConfig):
    """The loss and miner a config names, sharing one distance."""
    margin = cfg.margin if cfg.margin is not None else (1.0 if cfg.loss == "contrastive" else 0.2)
    distance = get_distance(cfg.distance)
    kwargs: dict[str, Any] = {"margin": margin, "distance": distance}
    if cfg.loss == "contrastive":
        kwargs["squared_margin"] = cfg.squared_margin
    loss = get_loss(cfg.loss, **kwargs)
    name = cfg.miner or ("adjacent-pairs" if cfg.sampler == "pairs" else DEFAULT_MINER[cfg.loss])
    if cfg.sampler == "pairs" and name != "adjacent-pairs":
        raise ValueError("the pairs sampler goes with the adjacent-pairs miner")
    cls = MINERS[name]
    mkw: dict[str, Any] = {}
    if name in ("batch-hard", "semi-hard", "hard-cases"):
        mkw["distance"] = distance
    if name == "semi-hard":
        mkw["margin"] = margin
    return loss, cls(**mkw)


def build_batch_sampler(cfg: TrainConfig, targets: Sequence[int]):
    if cfg.sampler == "pairs":
        return PairSampler(targets, pairs_per_batch=cfg.p * cfg.k // 2,
                           positive_fraction=cfg.positive_fraction,
                           num_batches=cfg.steps_per_epoch, seed=cfg.seed)
    counts = np.bincount(np.asarray(targets))
    n_classes = int((counts >= 2).sum())
    if cfg.sampler in REFRESH_SAMPLERS:
        return build_refresh_sampler(cfg.sampler, targets, p=min(cfg.p, n_classes), k=cfg.k,
                                     num_batches=cfg.steps_per_epoch, seed=cfg.seed,
                                     neighbours=cfg.neighbours)
    return PKSampler(targets, p=min(cfg.p, n_classes), k=cfg.k,
                     num_batches=cfg.steps_per_epoch, seed=cfg.seed)


def fit(state: TrainState, loader: Iterable, loss_fn, miner, *, epochs: int,
        grad_clip: float | None = None, callbacks: Sequence[Callback] = (),
        device: str | torch.device = "cpu") -> TrainState:
    """Run epochs ``state.epoch`` .. ``epochs - 1``; see the module docstring."""
    cbs = CallbackList(callbacks)
    model = state.model.to(device)
    cbs.on_train_start(state)
    for epoch in range(state.epoch, epochs):
        state.epoch, state.metrics = epoch, {}
        sampler = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        cbs.on_epoch_start(state)
        model.train()
        losses, active, total, n_img = [], 0, 0, 0
        t0 = time.perf_counter()
        bar = progress(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            emb = model(x)
            loss = loss_fn(emb, y, miner(emb, y))
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                state.grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                                       grad_clip))
            state.optimizer.step()
            if state.scheduler is not None:
                state.scheduler.step()
            state.step += 1
            state.loss = loss.item()
            state.active_fraction = loss_fn.last_active / max(loss_fn.last_total, 1)
            state.step_losses.append(state.loss)
            losses.append(state.loss)
            active += loss_fn.last_active
            total += loss_fn.last_total
            n_img += len(x)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}",
                            active=f"{state.active_fraction:.2f}")
            cbs.on_step_end(state)
            if state.stop:
                break
        seconds = time.perf_counter() - t0
        state.history.append({
            "epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else math.nan,
            "active_fraction": active / max(total, 1), "images_per_s": n_img / seconds,
            "seconds": seconds, "lr": state.optimizer.param_groups[0]["lr"]})
        log.info("epoch %d loss %.4f active %.3f %.1f img/s", epoch + 1,
                 state.history[-1]["loss"], state.history[-1]["active_fraction"],
                 state.history[-1]["images_per_s"])
        cbs.on_epoch_end(state)
        if state.stop:
            state.epoch = epoch + 1
            break
    else:
        state.epoch = epochs
    cbs.on_train_end(state)
    return state


def _split(cfg: TrainConfig, samples: list[Sample] | None) -> tuple[DatasetSplit, list, list]:
    if samples is not None:
        split = DatasetSplit(cfg.format, list(samples), [])
    else:
        kwargs = {"train_folds": tuple(cfg.lfw_train_folds)} if cfg.format == "lfw" else {}
        split = load_split(cfg.format, cfg.data, **kwargs)
    train_s, val_s = split_by_class(split.train, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if cfg.val_max_images and len(val_s) > cfg.val_max_images:
        rng = random.Random(cfg.seed)
        val_s = sorted(rng.sample(val_s, cfg.val_max_images), key=lambda s: s.path)
    return split, train_s, val_s


def build_spec(cfg: TrainConfig, split: DatasetSplit) -> ModelSpec:
    resize = cfg.resize_size
    if resize is None and split.resize_ratio != 1.0:
        resize = int(round(cfg.input_size * split.resize_ratio))
    return ModelSpec(arch=cfg.arch, embedding_dim=cfg.embedding_dim, input_size=cfg.input_size,
                     resize_size=resize, metric=cfg.metric, name=cfg.name,
                     arch_kwargs=dict(cfg.arch_kwargs or {}))


def calibrate(embedder: Embedder, samples: list[Sample], *, n_pairs: int = 2000, seed: int = 0,
              target_far: float = 1e-3):
    """Embed held-out images; on sampled genuine/impostor pairs pick the best-accuracy
    distance threshold and the threshold at ``target_far``. Returns (best, at_far)."""
    emb = embedder.embed_paths([s.path for s in samples])
    labels = np.array([s.label for s in samples])
    i, j, same = sample_pairs(labels, n_pairs=n_pairs, seed=seed)
    d = pair_distances(emb, i, j)
    return best_accuracy_threshold(d, same), threshold_at_far(d, same, target_far)


def _resume(state: TrainState, path: Path) -> None:
    ckpt = load_checkpoint(path)
    if ckpt.spec.arch != state.spec.arch or ckpt.spec.embedding_dim != state.spec.embedding_dim:
        raise ValueError(f"cannot resume from {path}: it holds a {ckpt.spec.arch} "
                         f"(dim {ckpt.spec.embedding_dim}), the config asks for "
                         f"{state.spec.arch} (dim {state.spec.embedding_dim})")
    state.model.load_state_dict(ckpt.state_dict)
    state.optimizer.load_state_dict(ckpt.extra["optimizer"])
    if state.scheduler is not None and ckpt.extra.get("scheduler"):
        state.scheduler.load_state_dict(ckpt.extra["scheduler"])
    state.epoch, state.step = int(ckpt.extra["epoch"]), int(ckpt.extra["step"])
    state.history = list(ckpt.extra.get("history", []))
    state.best = dict(ckpt.extra.get("best", {}))
    if "torch_rng" in ckpt.extra:
        torch.set_rng_state(ckpt.extra["torch_rng"])
    log.info("resumed from %s after epoch %d (step %d)", path, state.epoch, state.step)


def train(cfg: TrainConfig, samples: list[Sample] | None = None, *,
          callbacks: Sequence[Callback] = (), loss_fn=None, miner=None,
          batch_sampler=None) -> Path:
    """Train; write ``last.pt`` (and ``best.pt``) every epoch and ``model.pt`` at the end:
    the best-by-validation weights with calibrated thresholds (the service's default is
    ``spec.threshold``, the best-accuracy one; ``metrics["calibration_far"]`` is the one at
    ``cfg.target_far``). ``samples`` replaces the dataset named by ``cfg.format``/``cfg.data``
    as the training pool; ``loss_fn``, ``miner`` and ``batch_sampler`` replace the parts the
    config names. ``cfg.ensemble`` > 1 trains an ensemble (``training.models.ensemble``). Under
    torchrun the model is DDP-wrapped, batches are sharded by rank and only rank 0 writes."""
    if cfg.ensemble > 1:
        from training.engine.train import train_ensemble

        return train_ensemble(cfg, cfg.ensemble, samples=samples)
    info = init_from_env()
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    split, train_s, val_s = _split(cfg, samples)
    if cfg.init:  # e.g. a model imported by `imgsim import-dlib`: keep its spec, fine-tune it
        start = load_checkpoint(cfg.init)
        spec = replace(start.spec, name=cfg.name, threshold=None)
        model = start.build().train()
        log.info("starting from %s (%s)", cfg.init, spec.arch)
    else:
        spec = build_spec(cfg, split)
        model = build_model(spec)
    if cfg.pretrained:
        missing, _ = load_pretrained_backbone(model, cfg.pretrained)
        log.info("loaded %s (%d backbone keys missing)", cfg.pretrained, len(missing))
    if cfg.init_from_autoencoder:
        init_backbone_from_autoencoder(model, spec, cfg.init_from_autoencoder)
    device = info.device if info.enabled else torch.device(cfg.device)
    model = wrap_model(model.to(device), info)
    built_loss, built_miner = build_loss_and_miner(cfg)
    loss_fn, miner = loss_fn or built_loss, miner or built_miner
    aug = cfg.augmentation or split.augment
    ds = LabelledImages(train_s, get_augmentation(aug, spec) if cfg.augment else eval_transform(spec))
    sampler = shard(batch_sampler or build_batch_sampler(cfg, ds.targets), info)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0)
    opt = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr,
                          weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    sched = build_scheduler(cfg.schedule, opt, total_steps=cfg.epochs * len(sampler),
                            warmup_steps=cfg.warmup_steps)
    config = asdict(cfg)
    state = TrainState(model=model, spec=spec, optimizer=opt, scheduler=sched,
                       out=out if info.is_main else None, config=config, dataset=ds,
                       loader=loader)
    if cfg.resume and (out / "last.pt").is_file():
        _resume(state, out / "last.pt")
    elif cfg.resume:
        log.warning("--resume: no %s yet, starting from scratch", out / "last.pt")
    standard: list[Callback] = []
    if val_s:
        standard.append(Validation(val_s, metric=cfg.val_metric, every=cfg.val_every))
    tb = _tensorboard(out, cfg.tensorboard and info.is_main)
    standard += [EpochCheckpoint(), MetricsCSV(out / "metrics.csv"),
                 NormLog(out / "norms.csv", every=cfg.norms_every,
                         sink=tb.scalar if tb else None), LossCurve(out / "loss.png")]
    if tb:
        standard.append(tb)
    log.info("training %s on %d images (%d classes), validating on %d images (%d classes)",
             cfg.arch, len(train_s), len(ds.classes), len(val_s), len({s.label for s in val_s}))
    extra: list = [DistributedSync(info)] if info.enabled else []
    extra += refresh_callbacks(loss_fn=loss_fn, batch_sampler=sampler,
                               every_steps=cfg.refresh_every,
                               max_per_class=cfg.refresh_max_per_class,
                               tree_levels=cfg.tree_levels, mining_k=cfg.mining_k, info=info)
    fit(state, loader, loss_fn, miner, epochs=cfg.epochs, grad_clip=cfg.grad_clip,
        callbacks=[*extra, *callbacks, *(standard if info.is_main else [])], device=device)
    state.model = unwrap(state.model)
    path = _finish(cfg, state, train_s, val_s, out) if info.is_main else out / "model.pt"
    barrier(info)  # no rank returns before model.pt is written
    return path


def _tensorboard(out: Path, enabled: bool) -> TensorBoard | None:
    if not enabled:
        return None
    try:
        return TensorBoard(out / "tb")
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        return None


def _finish(cfg: TrainConfig, state: TrainState, train_s: list[Sample], val_s: list[Sample],
            out: Path) -> Path:
    model, spec = state.model.cpu(), state.spec
    if state.best and (out / "best.pt").is_file():
        model.load_state_dict(load_checkpoint(out / "best.pt").state_dict)
        log.info("best %s %.4f at epoch %d", state.best["metric"], state.best["value"],
                 state.best["epoch"])
    model.eval()
    cal_s = val_s or train_s  # too few classes to hold some out: calibrate on training classes
    if cfg.val_max_images and len(cal_s) > cfg.val_max_images:
        cal_s = random.Random(cfg.seed).sample(cal_s, cfg.val_max_images)
    best, at_far = calibrate(Embedder(model, spec), cal_s, n_pairs=cfg.calibration_pairs,
                             seed=cfg.seed, target_far=cfg.target_far)
    log.info("calibrated threshold %.4f (val accuracy %.3f); at FAR %.0e: %.4f", best.threshold,
             best.accuracy, cfg.target_far, at_far.threshold)
    metrics = {"calibration": best.to_dict(),
               "calibration_far": {**at_far.to_dict(), "target_far": cfg.target_far},
               "calibrated_on": "validation classes" if val_s else "training classes",
               "final_loss": state.history[-1]["loss"] if state.history else math.nan,
               "best": state.best, "history": state.history}
    final = Checkpoint(spec.with_threshold(best.threshold), model.state_dict(), config=state.config,
                       metrics=metrics)
    return save_checkpoint(out / "model.pt", final)


def train_ensemble(cfg, members: int = 3, *, samples=None) -> Path:
    """Train ``members`` networks that differ in seed (initial weights, augmentation and the
    P x K / triplet draws) on the same training classes and write ``<out>/model.pt``: one
    ensemble checkpoint, its threshold calibrated on classes no member trained on.

    ``cfg`` is a ``training.engine.train.TrainConfig``; member i is trained with seed cfg.seed + i
    into ``<out>/member<i>`` on the training classes of the split seeded by cfg.seed (each
    member without a validation split of its own, so all see the same classes).
    """
    from training.checkpoint import save_checkpoint
    from training.data.datasets import load_split
    from training.data.folders import split_by_class
    from training.engine.distributed import init_from_env

    if members < 2:
        raise ValueError("an ensemble needs at least two members")
    if samples is None:
        split = load_split(cfg.format, cfg.data)
        pool, ratio, augment = split.train, split.resize_ratio, split.augment
    else:
        pool, ratio, augment = list(samples), 1.0, "crop"
    resize = cfg.resize_size or int(round(cfg.input_size * ratio))
    train_s, val_s = split_by_class(pool, val_fraction=cfg.val_fraction, seed=cfg.seed)
    paths = []
    for i in range(members):
        mcfg = dataclasses.replace(cfg, seed=cfg.seed + i, out=str(Path(cfg.out) / f"member{i}"),
                                   val_fraction=0.0, resize_size=resize,
                                   augmentation=cfg.augmentation or augment,
                                   name=f"{cfg.name}-member{i}", ensemble=1)
        log.info("ensemble member %d/%d (seed %d)", i + 1, members, mcfg.seed)
        paths.append(train(mcfg, train_s))
    out = Path(cfg.out) / "model.pt"
    if not init_from_env().is_main:  # under torchrun only rank 0 writes
        return out
    ckpt = combine_checkpoint_files(paths, name=cfg.name)
    cal = val_s or train_s
    ckpt = calibrate_ensemble(ckpt, [s.path for s in cal], [s.label for s in cal],
                              n_pairs=getattr(cfg, "calibration_pairs", 2000), seed=cfg.seed)
    ckpt.metrics["calibrated_on"] = "validation classes" if val_s else "training classes"
    return save_checkpoint(out, ckpt)
