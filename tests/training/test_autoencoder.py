import pytest
import torch
from PIL import Image

from training.checkpoint import load_autoencoder
from training.data.transforms import eval_transform
from training.models.autoencoder import ConvAutoencoder
from training.models.backbones import BACKBONES, build_model
from training.models.spec import ModelSpec
from training.pretraining.autoencoder import (
    PretrainConfig,
    images_digest,
    init_backbone_from_autoencoder,
    list_unlabelled,
    pretrain,
)


# one per feature-map family (SmallCNN, torchvision ResNet, torchvision MobileNetV3)
@pytest.mark.parametrize("arch", ["smallcnn", "resnet18", "mobilenet_v3_small"])
def test_backbone_families_reconstruct_to_input_size(arch):
    assert arch in BACKBONES
    torch.manual_seed(0)
    for variational in (False, True):
        ae = ConvAutoencoder(arch, input_size=32, latent_channels=8, variational=variational).eval()
        recon, mu, logvar = ae(torch.randn(2, 3, 32, 32))
        assert recon.shape == (2, 3, 32, 32)
        assert (logvar is not None) == variational and mu.shape[1] == 8


def test_vae_samples_in_training_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    ae = ConvAutoencoder("smallcnn", input_size=16, latent_channels=4, variational=True,
                         arch_kwargs={"width": 4})
    x = torch.randn(3, 3, 16, 16)
    ae.train()
    assert not torch.allclose(ae(x)[0], ae(x)[0])
    ae.eval()
    assert torch.equal(ae(x)[0], ae(x)[0])
    total, rec, kl = ae.loss(x, beta=2.0)
    assert kl > 0 and total.item() == pytest.approx(rec + 2.0 * kl, rel=1e-5)


@pytest.fixture(scope="module")
def few_digits(digits_dir, tmp_path_factory):
    """48 digit images (classes 0-5) to pre-train on; classes 6-9 play the unseen test split."""
    keep = sorted(p for c in "012345" for p in (digits_dir / c).iterdir())[::5]  # 48 images
    test = sorted(p for c in "6789" for p in (digits_dir / c).iterdir())
    d = tmp_path_factory.mktemp("lists")
    (d / "train.txt").write_text("\n".join(map(str, keep)))
    (d / "test.txt").write_text("\n".join(map(str, test)))
    return d / "train.txt", d / "test.txt", keep, test


def test_only_allowed_images_are_used(digits_dir, few_digits):
    train_list, test_list, keep, test = few_digits
    got = list_unlabelled(PretrainConfig(out="x", data=str(digits_dir), exclude_file=str(test_list)))
    assert len(got) == 400 - len(test) and not set(got) & {str(p.resolve()) for p in test}
    got = list_unlabelled(PretrainConfig(out="x", list_file=str(train_list)))
    assert got == sorted(str(p.resolve()) for p in keep)
    with pytest.raises(ValueError, match="--data"):
        list_unlabelled(PretrainConfig(out="x"))
    with pytest.raises(FileNotFoundError):
        list_unlabelled(PretrainConfig(out="x", data=str(digits_dir / "nope")))


@pytest.mark.slow
def test_pretrain_learns_and_initialises_a_backbone(tmp_path, few_digits):
    train_list, _, keep, _ = few_digits
    cfg = PretrainConfig(out=str(tmp_path), list_file=str(train_list), input_size=32, epochs=8,
                         batch_size=8, lr=3e-3, num_workers=0, latent_channels=16,
                         arch_kwargs={"width": 8}, augment=False, grid_images=6)
    path = pretrain(cfg)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()[1:]
    mse = [float(r.split(",")[2]) for r in rows]
    assert len(mse) == 8 and mse[-1] < 0.6 * mse[0]
    ae, payload = load_autoencoder(path)
    assert payload["images"] == {"count": len(keep),
                                 "sha256": images_digest([str(p.resolve()) for p in keep])}
    grid = Image.open(tmp_path / "reconstructions.png")
    assert grid.size[0] > grid.size[1] * 2  # 6 columns, 2 rows (inputs, reconstructions)
    # on its images the AE beats the best constant guess per pixel (the mean image) clearly
    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=32, arch_kwargs={"width": 8})
    tf = eval_transform(spec)
    x = torch.stack([tf(Image.open(p)) for p in keep])
    with torch.no_grad():
        ae_mse = torch.mean((ae(x)[0] - x) ** 2).item()
    assert ae_mse < 0.7 * torch.mean((x - x.mean(0)) ** 2).item()

    torch.manual_seed(1)
    model = build_model(spec)
    head = model.head.weight.clone()
    info = init_backbone_from_autoencoder(model, spec, path)
    assert info["images"]["count"] == len(keep) and "state_dict" not in info
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, ae.backbone.state_dict()[k]), k
    assert torch.equal(model.head.weight, head)  # the head stays as it was
    other = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=32)  # width 32, not 8
    with pytest.raises(ValueError, match="does not match"):
        init_backbone_from_autoencoder(build_model(other), other, path)


def test_cli_reports_bad_input(tmp_path, capsys):
    from imgsim.cli import main

    code = main(["pretrain", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert code == 2 and "image folder not found" in capsys.readouterr().err
    code = main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--epochs", "0"])
    assert code == 2 and "--epochs must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_train_init_from_autoencoder(tmp_path, few_digits, digits_dir):
    from training.checkpoint import load_checkpoint
    from training.engine.train import TrainConfig, train

    train_list, _, _, _ = few_digits
    ae_path = pretrain(PretrainConfig(out=str(tmp_path / "ae"), list_file=str(train_list),
                                      arch_kwargs={"width": 4}, input_size=16, epochs=1,
                                      batch_size=16, num_workers=0, latent_channels=4))
    ae, _ = load_autoencoder(ae_path)
    # lr 0: the run's weights are exactly the ones it started from
    cfg = TrainConfig(data=str(digits_dir), out=str(tmp_path / "run"),
                      init_from_autoencoder=str(ae_path), lr=0.0, arch="smallcnn",
                      arch_kwargs={"width": 4}, input_size=16, embedding_dim=8, p=4, k=2,
                      steps_per_epoch=1, epochs=1, num_workers=0, val_fraction=0.0,
                      tensorboard=False, calibration_pairs=50)
    model = load_checkpoint(train(cfg)).build()
    for name, p in model.backbone.named_parameters():
        assert torch.equal(p, dict(ae.backbone.named_parameters())[name]), name
    with pytest.raises(ValueError, match="does not match"):
        train(TrainConfig(data=str(digits_dir), out=str(tmp_path / "bad"), arch="smallcnn",
                          arch_kwargs={"width": 8}, init_from_autoencoder=str(ae_path),
                          input_size=16, num_workers=0))
