import dataclasses
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.models.backbones import MODEL_BUILDERS, build_model
from training.models.embedder import Embedder
from training.models.spec import ModelSpec


def _member(seed: int, dim: int = 8, width: int = 4) -> Checkpoint:
    spec = ModelSpec(arch="smallcnn", embedding_dim=dim, input_size=16, name=f"m{seed}",
                     arch_kwargs={"width": width}, threshold=0.5)
    torch.manual_seed(seed)
    return Checkpoint(spec, build_model(spec).state_dict(), config={"seed": seed})


def test_one_checkpoint_loads_through_load_checkpoint_without_importing_ensemble(tmp_path,
                                                                              monkeypatch):
    from training.models.ensemble import combine_checkpoints

    path = save_checkpoint(tmp_path / "ens.pt",
                           combine_checkpoints([_member(0), _member(1, dim=4), _member(2)]))
    # as if nothing had imported training.models.ensemble: loading must find the builder itself
    monkeypatch.delitem(sys.modules, "training.models.ensemble")
    monkeypatch.delitem(MODEL_BUILDERS, "ensemble")
    e = Embedder.from_checkpoint(path)
    assert "training.models.ensemble" in sys.modules and "ensemble" in MODEL_BUILDERS
    assert e.dim == 20 and e.embed_tensors(torch.zeros(2, 3, 16, 16)).shape == (2, 20)
    payload = torch.load(path, weights_only=True)  # primitives and tensors only
    assert payload["spec"]["arch"] == "ensemble" and len(payload["spec"]["arch_kwargs"]["members"]) == 3


def test_embedding_is_members_concatenated_and_renormalised():
    from training.models.ensemble import combine_checkpoints

    members = [_member(0), _member(1, dim=4)]
    ckpt = combine_checkpoints(members)
    ens = Embedder(ckpt.build(), ckpt.spec)
    x = torch.randn(5, 3, 16, 16)
    parts = [Embedder(m.build(), m.spec).embed_tensors(x) for m in members]
    expect = np.concatenate(parts, 1) / np.sqrt(2)  # each part has norm 1
    got = ens.embed_tensors(x)
    assert got.shape == (5, 12) and np.allclose(got, expect, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert ckpt.spec.threshold is None  # member thresholds do not carry over


def test_members_must_share_preprocessing():
    from training.models.ensemble import combine_checkpoints

    a, b = _member(0), _member(1)
    b = dataclasses.replace(b, spec=dataclasses.replace(b.spec, input_size=32))
    with pytest.raises(ValueError, match="input_size"):
        combine_checkpoints([a, b])
    bad = dataclasses.replace(a, spec=dataclasses.replace(a.spec, embedding_dim=9))
    # weights that do not fit fail at combine time, as a one-line CheckpointError (a ValueError)
    with pytest.raises(ValueError, match="not a usable imgsim checkpoint.*size mismatch"):
        combine_checkpoints([a, bad])


def test_calibrated_threshold_on_images(tmp_path):
    from training.models.ensemble import calibrate_ensemble, combine_checkpoints

    rng = np.random.default_rng(0)
    paths, labels = [], []
    for c in range(3):
        for j in range(4):
            arr = np.clip(rng.normal(80 * c, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            p = tmp_path / f"{c}_{j}.png"
            Image.fromarray(arr).save(p)
            paths.append(str(p))
            labels.append(c)
    ckpt = calibrate_ensemble(combine_checkpoints([_member(0), _member(1)]), paths, labels,
                              n_pairs=40)
    assert ckpt.spec.threshold is not None and 0 < ckpt.spec.threshold < 2
    assert ckpt.metrics["calibration"]["n_pairs"] > 0
    loaded = load_checkpoint(save_checkpoint(tmp_path / "e.pt", ckpt))
    assert loaded.spec.threshold == pytest.approx(ckpt.spec.threshold)


@pytest.mark.slow
def test_train_ensemble_of_two_into_one_checkpoint(tmp_path, digits_dir):
    from training.engine.train import TrainConfig, train

    cfg = TrainConfig(data=str(digits_dir), out=str(tmp_path), ensemble=2, arch="smallcnn",
                      arch_kwargs={"width": 4}, input_size=16, embedding_dim=8, p=4, k=3,
                      steps_per_epoch=2, epochs=1, num_workers=0, val_fraction=0.3,
                      tensorboard=False, calibration_pairs=100)
    path = train(cfg)
    assert path == tmp_path / "model.pt"
    ckpt = load_checkpoint(path)
    members = ckpt.spec.arch_kwargs["members"]
    assert ckpt.spec.arch == "ensemble" and ckpt.spec.embedding_dim == 16 and len(members) == 2
    assert ckpt.spec.threshold is not None
    assert ckpt.metrics["calibrated_on"] == "validation classes"
    seeds = [m["config"]["seed"] for m in ckpt.config["members"]]
    assert seeds == [0, 1]
    # the members trained on the same classes: the 3 validation classes none of them saw
    trained = [load_checkpoint(tmp_path / f"member{i}" / "model.pt") for i in range(2)]
    assert all(t.config["val_fraction"] == 0.0 for t in trained)
    a, b = (Embedder(t.build(), t.spec) for t in trained)
    x = torch.randn(3, 3, 16, 16)
    assert not np.allclose(a.embed_tensors(x), b.embed_tensors(x))  # different draws
    got = Embedder.from_checkpoint(path).embed_tensors(x)
    assert np.allclose(got, np.concatenate([a.embed_tensors(x), b.embed_tensors(x)], 1)
                       / np.sqrt(2), atol=1e-5)
