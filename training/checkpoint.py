"""Self-describing checkpoints of every network the project trains (embedders, segmenters,
autoencoders): primitives and tensors only, so weights_only loading works; written atomically;
any bad file is one CheckpointError line."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.models.autoencoder import ConvAutoencoder
from training.models.backbones import build_model
from training.models.spec import ModelSpec
from training.segmentation.models import SegModelSpec, build_segmenter

FORMAT = "imgsim.checkpoint/1"  # embedders (and ensembles of them)
# What spec.threshold is a distance between (the payload's "threshold_units", written since
# issue 16): "unit" = L2-normalised outputs (metric cosine), "raw" = the model's raw outputs
# (metric euclidean). Files without it are older; dlib checkpoints among them held raw
# descriptors and dlib's raw 0.6, and load converted (training.dlib.model.upgrade_raw_spec).
THRESHOLD_UNITS = ("unit", "raw")
SEGMENTER_FORMAT = "imgsim.segmenter/1"
AUTOENCODER_FORMAT = "imgsim.autoencoder/1"

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint: missing, a directory, unreadable, not a
    torch file, truncated, another format, or fields that do not rebuild the model. The
    message is one line that names the file; the command line prints it and exits 2."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at the path (a FileNotFoundError too, for callers that test for that)."""


def _one_line(e: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def torch_load_file(path: str | Path, *, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` of a file, every way it can fail -> CheckpointError.

    The unpickler answers a text file with ``KeyError``, random bytes with
    ``UnpicklingError``, a truncated zip with ``RuntimeError``...: none of them says "this is
    not a checkpoint" (and torch's advice to retry with ``weights_only=False`` is not one to
    pass on), so each becomes that, naming the file and what it looks like instead."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory, not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        with warnings.catch_warnings():  # a foreign pickle's protocol warning: noise here
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:  # unreadable (permissions, I/O)
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror or _one_line(e)}") \
            from None
    except Exception as e:  # noqa: BLE001  whatever the unpickler or zip reader raises
        if not head:
            why = "the file is empty"
        elif head.startswith(b"PK"):  # torch.save's zip container
            why = f"a damaged, truncated or foreign zip file ({_one_line(e, 100)})"
        elif head[:1] == b"\x80" and "weights only" in str(e).lower():
            why = ("a pickle of Python objects, which are not loaded (a checkpoint holds only "
                   "tensors and primitives)")
        else:
            why = "not a torch file"
        raise CheckpointError(f"{path} is not {_a(what)}: {why}") from None


def read_checkpoint_file(path: str | Path, *, format: str,
                         what: str = "imgsim checkpoint") -> dict[str, Any]:
    """The payload dict of a checkpoint file whose ``format`` is ``format``, else
    CheckpointError (see :func:`torch_load_file`)."""
    payload = torch_load_file(path, what=what)
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != format:
        was = f"its format is {found!r}" if isinstance(found, str) else \
            f"a torch file of another kind ({type(payload).__name__} without a format)"
        raise CheckpointError(f"{path} is not {_a(what)} (expected format {format}; {was})")
    return payload


@contextmanager
def checkpoint_fields(path: str | Path, what: str = "imgsim checkpoint") -> Iterator[None]:
    """Around the code that turns a payload into objects: a missing or ill-typed field, or
    weights that do not fit the architecture, become one CheckpointError line."""
    try:
        yield
    except CheckpointError:
        raise
    except KeyError as e:
        raise CheckpointError(f"{path} is not a complete {what}: it has no field {e}") from None
    except (TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a usable {what}: {_one_line(e)}") from None


@dataclass
class Checkpoint:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # optimiser state, epoch, ...
    source: str = field(default="", compare=False, repr=False)  # file it was read from

    def build(self) -> nn.Module:
        """The network with these weights, in eval mode (CheckpointError when they do not
        fit the spec's architecture)."""
        with checkpoint_fields(self.source or f"checkpoint of {self.spec.arch}"):
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
        "threshold_units": "unit" if ckpt.spec.normalize else "raw",
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
    """Read and check a checkpoint file; any bad file -> CheckpointError (one line)."""
    payload = read_checkpoint_file(path, format=FORMAT)
    with checkpoint_fields(path):
        state = payload["state_dict"]
        if not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise TypeError("state_dict is not a mapping of names to tensors")
        extras = {name: payload.get(name, {}) for name in ("config", "metrics", "extra")}
        for name, value in extras.items():
            if not isinstance(value, dict):
                raise TypeError(f"{name} is a {type(value).__name__}, not a mapping")
        spec = payload["spec"]
        if not isinstance(spec, dict):
            raise TypeError(f"spec is a {type(spec).__name__}, not a mapping")
        units = payload.get("threshold_units")
        if units is not None and units not in THRESHOLD_UNITS:
            raise ValueError(f"threshold_units is {units!r}, not one of {THRESHOLD_UNITS}")
        spec = ModelSpec.from_dict(spec)
        if units is None and spec.arch == "dlib_resnet" and spec.metric == "euclidean":
            from training.dlib.model import upgrade_raw_spec

            spec = upgrade_raw_spec(spec)
            log.info("%s: a dlib checkpoint from before issue 16 (raw descriptors): loaded with "
                     "L2-normalised descriptors and threshold %s (converted)", path,
                     spec.threshold)
        return Checkpoint(spec=spec, state_dict=state, **extras, source=str(path))


def load_pretrained_backbone(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load local weights into ``model.backbone`` (no downloads). Keys may be a plain
    torchvision state dict or prefixed with ``backbone.``; the classifier is ignored.
    Returns (missing, unexpected) keys."""
    state = torch_load_file(path, what="backbone weights file")  # bad file: CheckpointError
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a backbone weights file: it holds a "
                              f"{type(state).__name__}, not a state dict")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    wanted = set(model.backbone.state_dict())
    if not wanted & set(state):  # nothing would load: training would silently start from scratch
        raise CheckpointError(f"{path} holds no weights of this backbone (none of its "
                              f"{len(state)} tensor names match; e.g. {sorted(wanted)[:1]})")
    with checkpoint_fields(path, "backbone weights file"):  # shapes of another architecture
        result = model.backbone.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


# Segmenters (U-Net / SegNet): their spec, weights and the input normalisation they were
# trained with.


@dataclass
class SegCheckpoint:
    spec: SegModelSpec
    state_dict: dict[str, torch.Tensor]
    mean: float
    std: float
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        model = build_segmenter(self.spec)
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_seg_checkpoint(path: str | Path, ckpt: SegCheckpoint) -> Path:
    """Primitives and tensors only (``torch.load(weights_only=True)`` works); atomic write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": SEGMENTER_FORMAT, "spec": ckpt.spec.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
               "mean": ckpt.mean, "std": ckpt.std, "config": ckpt.config, "metrics": ckpt.metrics}
    return atomic_torch_save(payload, path)


def load_seg_checkpoint(path: str | Path) -> SegCheckpoint:
    what = "imgsim segmentation checkpoint"  # any bad file: CheckpointError, one line
    payload = read_checkpoint_file(path, format=SEGMENTER_FORMAT, what=what)
    with checkpoint_fields(path, what):
        return SegCheckpoint(SegModelSpec.from_dict(payload["spec"]), payload["state_dict"],
                             float(payload["mean"]), float(payload["std"]),
                             payload.get("config", {}), payload.get("metrics", {}))


# Autoencoders: the whole network (encoder = a backbone, decoder) and what it was trained on.


def save_autoencoder(path: str | Path, model: nn.Module, *, encoder: dict[str, Any],
                     config: dict[str, Any], images: dict[str, Any],
                     metrics: dict[str, Any]) -> Path:
    """``encoder``: arch, in_channels, arch_kwargs, input_size, mean, std; atomic write."""
    payload = {
        "format": AUTOENCODER_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "encoder": encoder,
        "config": config,
        "images": images,
        "metrics": metrics,
    }
    return atomic_torch_save(payload, path)


def read_autoencoder(path: str | Path) -> dict[str, Any]:
    """The payload of an autoencoder file (CheckpointError for any other file)."""
    return read_checkpoint_file(path, format=AUTOENCODER_FORMAT, what="imgsim autoencoder")


def load_autoencoder(path: str | Path) -> tuple[ConvAutoencoder, dict]:
    """The trained autoencoder (eval mode) and its payload (config, images, metrics)."""
    payload = read_autoencoder(path)
    with checkpoint_fields(path, "imgsim autoencoder"):
        cfg, enc = payload["config"], payload["encoder"]
        model = ConvAutoencoder(enc["arch"], in_channels=enc["in_channels"],
                                input_size=enc["input_size"],
                                latent_channels=cfg["latent_channels"],
                                variational=cfg["variational"], arch_kwargs=enc["arch_kwargs"])
        model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (a missing path or a directory: an error that says which)."""
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a file")
    if not Path(path).exists():
        raise FileNotFoundError(f"file not found: {path}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
