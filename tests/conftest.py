"""Shared fixtures: real digit images (from scikit-learn), a tiny trained model, the shared data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("IMGSIM_DATA", REPO.parent / "shared" / "data"))


def shared_data(name: str) -> Path:
    """Path of a dataset under ../shared/data, or skip the test with the reason."""
    path = DATA_DIR / name
    if not path.exists():
        pytest.skip(f"{path} not present (set IMGSIM_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """Real handwritten digits (sklearn) as PNGs: <dir>/<digit>/NNNN.png, 40 per class."""
    from service.demo import export_digits

    root = tmp_path_factory.mktemp("digits")
    export_digits(root, size=32)
    for cls in root.iterdir():  # keep it small: 40 images per class
        for f in sorted(cls.iterdir())[40:]:
            f.unlink()
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, digits_dir) -> Path:
    """A small CNN trained for a few steps on the digits (seconds on a CPU)."""
    from training.engine.train import TrainConfig, train

    out = tmp_path_factory.mktemp("model")
    return train(TrainConfig(data=str(digits_dir), out=str(out), arch="smallcnn", input_size=32,
                             embedding_dim=32, loss="contrastive", margin=0.5, p=8, k=4,
                             epochs=2, steps_per_epoch=15, num_workers=0, name="tiny"))
