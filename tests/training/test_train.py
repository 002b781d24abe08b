import csv
import math

import numpy as np
import pytest
import torch

from imgsim.cli import main
from training.checkpoint import load_checkpoint
from training.engine.callbacks import Callback
from training.engine.config import merge_config, read_toml_config
from training.engine.optim import build_optimizer, build_scheduler
from training.engine.train import TrainConfig, train
from training.miners.in_batch import BatchHardMiner
from training.models.info import count_flops, model_table

TINY = dict(arch="smallcnn", arch_kwargs={"width": 8}, input_size=16, embedding_dim=16, p=4,
            k=4, steps_per_epoch=3, num_workers=0, val_fraction=0.2, lr=1e-3, norms_every=2)


class Recorder(Callback):
    def __init__(self, stop_after_epoch: int | None = None) -> None:
        self.events, self.stop_after = [], stop_after_epoch

    def on_epoch_start(self, state):
        self.events.append(("epoch", state.epoch, state.step, len(state.dataset)))

    def on_step_end(self, state):
        self.events.append(("step", state.epoch, state.step, state.loss))

    def on_epoch_end(self, state):
        if self.stop_after is not None and state.epoch + 1 == self.stop_after:
            state.stop = True


@pytest.mark.slow
def test_train_writes_every_artifact(tmp_path, digits_dir):
    rec = Recorder()
    path = train(TrainConfig(data=str(digits_dir), out=str(tmp_path), epochs=2, **TINY),
                 callbacks=[rec])
    ckpt = load_checkpoint(path)
    # callbacks see the epoch, the optimiser step and the 320 training images (8 classes)
    assert [e[:3] for e in rec.events if e[0] == "epoch"] == [("epoch", 0, 0), ("epoch", 1, 3)]
    assert [e[2] for e in rec.events if e[0] == "step"] == [1, 2, 3, 4, 5, 6]
    assert rec.events[0][3] == 320
    # two thresholds: best accuracy (the service default) and the stricter one at FAR 1e-3
    cal, far = ckpt.metrics["calibration"], ckpt.metrics["calibration_far"]
    assert ckpt.spec.threshold == pytest.approx(cal["threshold"])
    assert far["far"] <= 1e-3 and far["threshold"] <= cal["threshold"]
    assert ckpt.metrics["calibrated_on"] == "validation classes"
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert 0 <= float(rows[0]["val_recall@1"]) <= 1 and float(rows[0]["images_per_s"]) > 0
    best = ckpt.metrics["best"]
    assert best["value"] == max(float(r["val_recall@1"]) for r in rows)
    with open(tmp_path / "norms.csv") as f:
        norms = list(csv.DictReader(f))
    layers = {r["layer"] for r in norms}
    assert "head.weight" in layers and "backbone.features.0.weight" in layers
    assert all(math.isfinite(float(r["grad_norm"])) and float(r["weight_norm"]) > 0 for r in norms)
    assert {r["step"] for r in norms} == {"1", "2", "4", "6"}
    for name in ["last.pt", "best.pt", "loss.png"]:
        assert (tmp_path / name).stat().st_size > 0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, digits_dir):
    cfg = TrainConfig(data=str(digits_dir), out=str(tmp_path / "a"), epochs=2, tensorboard=False,
                      **TINY)
    train(cfg)
    crashed = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "b")})
    train(crashed, callbacks=[Recorder(stop_after_epoch=1)])  # stops after epoch 1 of 2
    assert load_checkpoint(tmp_path / "b" / "last.pt").extra["epoch"] == 1
    rec = Recorder()
    train(TrainConfig(**{**crashed.__dict__, "resume": True}), callbacks=[rec])
    assert rec.events[0][:3] == ("epoch", 1, 3)  # picks up at epoch 2, step 3
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert b.extra["epoch"] == 2 and len(b.extra["history"]) == 2
    for k, v in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[k], v, msg=k)


@pytest.mark.slow
def test_injected_parts_and_pair_sampler(tmp_path, digits_dir):
    miner = BatchHardMiner()
    calls = []

    class CountingMiner:
        def __call__(self, emb, labels):
            calls.append(len(labels))
            return miner(emb, labels)

    train(TrainConfig(data=str(digits_dir), out=str(tmp_path / "inj"), epochs=1,
                      tensorboard=False, **TINY), miner=CountingMiner())
    assert calls == [16, 16, 16]
    path = train(TrainConfig(data=str(digits_dir), out=str(tmp_path / "pairs"), epochs=1,
                             loss="contrastive", sampler="pairs", positive_fraction=0.25,
                             tensorboard=False, **TINY))
    assert load_checkpoint(path).config["sampler"] == "pairs"
    with pytest.raises(ValueError, match="adjacent-pairs"):
        train(TrainConfig(data=str(digits_dir), out=str(tmp_path / "x"), sampler="pairs",
                          miner="batch-hard", **TINY))


def test_config_validation_lists_valid_names():
    with pytest.raises(ValueError, match="batch-hard"):
        TrainConfig(data="d", out="o", miner="hardest")
    with pytest.raises(ValueError, match="cub"):
        TrainConfig(data="d", out="o", format="imagenet")
    with pytest.raises(ValueError, match="sgd"):
        TrainConfig(data="d", out="o", optimizer="lbfgs")


def test_toml_config_merges_under_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\ndata = "/d"\nout = "/o"\nlr = 0.01\nepochs = 7\nloss = "contrastive"\n'
                 'arch-kwargs = { width = 8 }\n')
    values = read_toml_config(f)
    cfg = merge_config(values, {"epochs": 2})
    assert (cfg.lr, cfg.epochs, cfg.loss, cfg.arch_kwargs) == (0.01, 2, "contrastive", {"width": 8})
    f.write_text("lr = 0.1\nlearning_rate = 3\n")
    with pytest.raises(ValueError, match="learning_rate"):
        read_toml_config(f)
    with pytest.raises(ValueError, match="--data"):
        merge_config({"lr": 0.1}, {"out": "/o"})
    f.write_text("lr = [")
    with pytest.raises(ValueError, match="invalid TOML"):
        read_toml_config(f)


def test_train_cli_reads_config_and_rejects_bad_input(tmp_path, digits_dir, capsys):
    f = tmp_path / "c.toml"
    f.write_text(f'data = "{digits_dir}"\nepochs = 5\narch_kwargs = {{ width = 8 }}\n'
                 'input_size = 16\nsteps_per_epoch = 2\nnum_workers = 0\np = 4\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(f), "--out", str(out), "--epochs", "1",
                 "--no-tensorboard", "--lr", "0.002"]) == 0
    cfg = load_checkpoint(out / "model.pt").config
    assert (cfg["epochs"], cfg["lr"], cfg["input_size"], cfg["tensorboard"]) == (1, 0.002, 16, False)
    assert main(["train", "--data", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "none.toml")]) == 2


def test_schedules_and_optimizers():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer("sgd", [w], lr=1.0)
    sched = build_scheduler("cosine", opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)  # warm-up
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.05  # cosine to ~0
    assert np.all(np.diff(lrs[1:]) <= 1e-12)
    opt = build_optimizer("adam", [w], lr=1.0)
    step = build_scheduler("step", opt, total_steps=9)
    seen = []
    for _ in range(9):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        step.step()
    assert seen[5] == 1.0 and seen[6] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="cosine"):
        build_scheduler("linear", opt, total_steps=3)


def test_model_table_counts(capsys):
    rows = {r["arch"]: r for r in model_table(input_size=224, archs=["resnet18"])}
    # torchvision's ResNet-18 is 1.8 G multiply-adds at 224 px; 11.2M parameters + the head
    assert 3.5e9 < rows["resnet18"]["flops"] < 3.8e9
    assert rows["resnet18"]["params"] == 11_176_512 + 512 * 128 + 128
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert count_flops(conv, 8) == 2 * 3 * 4 * 9 * 8 * 8
    assert main(["models", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_small" in out and "resnet50" in out


@pytest.mark.slow
def test_lfw_format_trains_on_the_chosen_folds_people(tmp_path, fake_lfw):
    seen = []

    class Classes(Callback):
        def on_train_start(self, state):
            seen.append(set(state.dataset.classes))

    tiny = {**TINY, "p": 3, "k": 2, "val_fraction": 0.0, "steps_per_epoch": 1}
    path = train(TrainConfig(data=str(fake_lfw), out=str(tmp_path), format="lfw",
                             lfw_train_folds=(2,), epochs=1, tensorboard=False, **tiny),
                 callbacks=[Classes()])
    assert seen == [{f"D{d}" for d in range(5, 10)}]
    spec = load_checkpoint(path).spec
    assert spec.resize_size == 2 * spec.input_size  # LFW: the eval crop keeps the central face
    assert load_checkpoint(path).metrics["calibrated_on"] == "training classes"
