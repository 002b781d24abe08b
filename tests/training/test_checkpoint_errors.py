"""Bad checkpoint files: every loader answers one CheckpointError line naming the file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from training.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_pretrained_backbone,
    save_checkpoint,
)
from training.models.backbones import build_model
from training.models.spec import ModelSpec

SPEC = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=32, in_channels=1, mean=(0.5,),
                 std=(0.5,))


def _good(path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(path, Checkpoint(SPEC, build_model(SPEC).state_dict()))


def _payload(path: Path, **changes) -> Path:
    good = torch.load(_good(path.with_suffix(".good.pt")), weights_only=True)
    good.update(changes)
    good = {k: v for k, v in good.items() if v is not None}
    torch.save(good, path)
    return path


def _weights_off(path: Path) -> Path:
    state = build_model(SPEC).state_dict()
    state.pop(next(iter(state)))
    return save_checkpoint(path, Checkpoint(SPEC, state))


def _truncated(path: Path) -> Path:
    data = _good(path.with_suffix(".good.pt")).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# (name, how to make the file, words the message must hold)
BAD_FILES = {
    "missing": (lambda p: p, "not found"),
    "directory": (lambda p: (p.mkdir(), p)[1], "is a directory"),
    "empty": (lambda p: (p.write_bytes(b""), p)[1], "empty"),
    "random bytes": (lambda p: (p.write_bytes(bytes(range(256)) * 8), p)[1], "not a torch file"),
    "text": (lambda p: (p.write_text("hello, not weights\n"), p)[1], "not a torch file"),
    "foreign zip": (lambda p: (zipfile.ZipFile(p, "w").writestr("x", "y"), p)[1], "zip"),
    "pickled objects": (lambda p: (p.write_bytes(pickle.dumps({"x": range(3)}, protocol=2)),
                                   p)[1], "pickle"),
    "another torch file": (lambda p: (torch.save({"w": torch.zeros(2)}, p), p)[1],
                           "expected format imgsim.checkpoint/1"),
    "another format": (lambda p: (torch.save({"format": "imgsim.segmenter/1"}, p), p)[1],
                       "'imgsim.segmenter/1'"),
    "truncated": (_truncated, "truncated"),
    "no spec": (lambda p: _payload(p, spec=None), "no field 'spec'"),
    "bad spec": (lambda p: _payload(p, spec={"arch": "smallcnn"}), "embedding_dim"),
    "spec not a mapping": (lambda p: _payload(p, spec="smallcnn"), "spec is a str"),
    "state_dict of non-tensors": (lambda p: _payload(p, state_dict={"w": 1}), "state_dict"),
    "unknown architecture": (lambda p: _payload(p, spec={**SPEC.to_dict(), "arch": "vgg99"}),
                             "unknown architecture"),
    "weights of another architecture": (_weights_off, "Missing key"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_checkpoint_is_one_checkpoint_error_line_naming_the_file(tmp_path, name):
    make, words = BAD_FILES[name]
    path = make(tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path).build()  # build: weights that do not fit show only there
    message = str(e.value)
    assert "\n" not in message and str(path) in message and words in message, message
    assert "weights_only" not in message  # torch's "retry unsafely" advice is not passed on


def test_missing_checkpoint_is_still_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_good_checkpoint_still_loads(tmp_path):
    ckpt = load_checkpoint(_good(tmp_path / "m.pt"))
    assert ckpt.spec == SPEC and ckpt.build().training is False


def test_autoencoder_and_backbone_loaders_share_the_checks(tmp_path):
    from training.checkpoint import load_autoencoder
    from training.pretraining.autoencoder import init_backbone_from_autoencoder

    text = tmp_path / "ae.pt"
    text.write_text("not an autoencoder")
    for load in (load_autoencoder,
                 lambda p: init_backbone_from_autoencoder(build_model(SPEC), SPEC, p),
                 lambda p: load_pretrained_backbone(build_model(SPEC), p)):
        with pytest.raises(CheckpointError, match=f"{text}.*not a torch file"):
            load(text)
    listing = tmp_path / "list.pt"
    torch.save([1, 2], listing)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_pretrained_backbone(build_model(SPEC), listing)
