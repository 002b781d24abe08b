"""Training-loop hooks: the state they see, and the loggers, validation and checkpoints built on them."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import Checkpoint, save_checkpoint
from training.data.folders import Sample
from training.models.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop and its callbacks share. ``epoch`` is the 0-based epoch running (after
    the loop: the number of epochs done); ``step`` counts optimiser steps over all epochs."""

    model: nn.Module
    spec: ModelSpec
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    out: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    dataset: Any = None  # the training Dataset (e.g. data.LabelledImages)
    loader: Any = None  # the batch source; its batch_sampler gets set_epoch(epoch)
    epoch: int = 0
    step: int = 0
    loss: float = math.nan
    active_fraction: float = math.nan
    grad_norm: float = math.nan  # total gradient norm before clipping
    step_losses: list[float] = field(default_factory=list)  # every step, for the loss curve
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    metrics: dict[str, float] = field(default_factory=dict)  # this epoch's validation metrics
    best: dict[str, Any] = field(default_factory=dict)  # {"metric", "value", "epoch"}
    stop: bool = False  # a callback may end training early


class Callback:
    """Override any of these; each receives the shared ``TrainState``."""

    def on_train_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...


class CallbackList(Callback):
    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def _call(self, name: str, state: TrainState) -> None:
        for cb in self.callbacks:
            getattr(cb, name, lambda s: None)(state)

    def on_train_start(self, state: TrainState) -> None:
        self._call("on_train_start", state)

    def on_epoch_start(self, state: TrainState) -> None:
        self._call("on_epoch_start", state)

    def on_step_end(self, state: TrainState) -> None:
        self._call("on_step_end", state)

    def on_epoch_end(self, state: TrainState) -> None:
        self._call("on_epoch_end", state)

    def on_train_end(self, state: TrainState) -> None:
        self._call("on_train_end", state)


def layer_norms(model: nn.Module) -> dict[str, tuple[float, float]]:
    """{parameter name: (weight L2 norm, gradient L2 norm or nan)} for every parameter."""
    out = {}
    for name, p in model.named_parameters():
        g = float(p.grad.detach().norm()) if p.grad is not None else math.nan
        out[name] = (float(p.detach().norm()), g)
    return out


class Validation(Callback):
    """At each epoch end: retrieval metrics of the validation images (classes never trained
    on) into ``state.metrics``; the best value of ``metric`` so far is written to best.pt."""

    def __init__(self, samples: Sequence[Sample], *, metric: str = "recall@1",
                 every: int = 1, batch_size: int = 64, num_workers: int = 0) -> None:
        self.samples = list(samples)
        self.metric, self.every = metric, every
        self.batch_size, self.num_workers = batch_size, num_workers

    def evaluate(self, state: TrainState) -> dict[str, float]:
        from training.evaluation.retrieval import retrieval_metrics
        from training.models.embedder import Embedder

        emb = Embedder(state.model, state.spec).embed_paths(
            [s.path for s in self.samples], batch_size=self.batch_size,
            num_workers=self.num_workers)
        m = retrieval_metrics(emb, [s.label for s in self.samples], nmi=False)
        return {f"val_{k}": v for k, v in m.items() if not k.startswith("n_")}

    def on_epoch_end(self, state: TrainState) -> None:
        if (state.epoch + 1) % self.every and state.epoch + 1 < state.config.get("epochs", 0):
            return
        state.metrics = self.evaluate(state)
        if state.history:
            state.history[-1].update(state.metrics)
        key = f"val_{self.metric}"
        if key not in state.metrics:
            raise ValueError(f"unknown validation metric {self.metric!r}; valid: "
                             f"{', '.join(k.removeprefix('val_') for k in state.metrics)}")
        value = state.metrics[key]
        log.info("epoch %d validation %s", state.epoch + 1,
                 " ".join(f"{k}={v:.4f}" for k, v in state.metrics.items()))
        if not state.best or value > state.best["value"]:
            state.best = {"metric": self.metric, "value": value, "epoch": state.epoch + 1}
            if state.out is not None:
                save_checkpoint(state.out / "best.pt", Checkpoint(
                    state.spec, state.model.state_dict(), config=state.config,
                    metrics=dict(state.metrics), extra={"epoch": state.epoch + 1}))


class EpochCheckpoint(Callback):
    """``last.pt`` after every epoch: weights, optimiser, schedule, history, RNG: enough to
    ``--resume`` exactly where training stopped."""

    def on_epoch_end(self, state: TrainState) -> None:
        if state.out is None:
            return
        extra = {
            "epoch": state.epoch + 1, "step": state.step, "history": state.history,
            "best": state.best, "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict() if state.scheduler is not None else {},
            "torch_rng": torch.get_rng_state(),
        }
        save_checkpoint(state.out / "last.pt", Checkpoint(state.spec, state.model.state_dict(),
                                                          config=state.config, extra=extra))


class MetricsCSV(Callback):
    """``metrics.csv``: one row per epoch (loss, active fraction, images/s, lr, validation)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, state: TrainState) -> None:
        keys: list[str] = []
        for row in state.history:
            keys += [k for k in row if k not in keys]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(state.history)


class NormLog(Callback):
    """Per-layer weight and gradient norms every ``every`` steps into ``norms.csv`` (long
    format: step, layer, weight_norm, grad_norm) and to ``sink(tag, value, step)``
    (TensorBoard): a network that does not learn usually shows it here first."""

    def __init__(self, path: Path, *, every: int = 50,
                 sink: Callable[[str, float, int], None] | None = None) -> None:
        self.path, self.every, self.sink = path, every, sink

    def on_train_start(self, state: TrainState) -> None:
        if not self.path.exists() or state.step == 0:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(["step", "layer", "weight_norm", "grad_norm"])

    def on_step_end(self, state: TrainState) -> None:
        if state.step % self.every and state.step != 1:
            return
        norms = layer_norms(state.model)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            for name, (wn, gn) in norms.items():
                w.writerow([state.step, name, f"{wn:.6g}", f"{gn:.6g}"])
        if self.sink is not None:
            for name, (wn, gn) in norms.items():
                self.sink(f"weight_norm/{name}", wn, state.step)
                if not math.isnan(gn):
                    self.sink(f"grad_norm/{name}", gn, state.step)


class TensorBoard(Callback):
    """TensorBoard event files under ``<out>/tb``: step loss, active fraction, lr, gradient
    norm; epoch rows (validation metrics, images/s)."""

    def __init__(self, logdir: Path, *, every: int = 10) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir))
        self.every = every

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def on_step_end(self, state: TrainState) -> None:
        if state.step % self.every:
            return
        for tag, v in [("train/loss", state.loss), ("train/active_fraction", state.active_fraction),
                       ("train/lr", state.optimizer.param_groups[0]["lr"]),
                       ("train/grad_norm", state.grad_norm)]:
            self.writer.add_scalar(tag, v, state.step)

    def on_epoch_end(self, state: TrainState) -> None:
        for k, v in state.history[-1].items():
            if k != "epoch":
                self.writer.add_scalar(f"epoch/{k}", v, state.epoch + 1)
        self.writer.flush()

    def on_train_end(self, state: TrainState) -> None:
        self.writer.close()


class LossCurve(Callback):
    """``loss.png``: step loss (and its running mean) and the validation metric per epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, state: TrainState) -> None:
        plot_training_curves(self.path, state.step_losses, state.history)


def plot_training_curves(path: Path, step_losses: Sequence[float],
                         history: Sequence[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val_keys = [k for k in (history[-1] if history else {}) if k.startswith("val_")]
    fig, axes = plt.subplots(1, 2 if val_keys else 1, figsize=(10 if val_keys else 5.5, 3.8),
                             squeeze=False)
    ax = axes[0, 0]
    losses = np.asarray(step_losses, float)
    ax.plot(np.arange(1, len(losses) + 1), losses, alpha=0.3, lw=0.8, label="step")
    if len(losses) >= 5:
        w = max(5, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(w, len(losses) + 1), smooth, lw=1.5, label=f"mean of {w}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if val_keys:
        ax = axes[0, 1]
        epochs = [r["epoch"] for r in history]
        for k in val_keys:
            ax.plot(epochs, [r.get(k, np.nan) for r in history], marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_title("validation (held-out classes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
