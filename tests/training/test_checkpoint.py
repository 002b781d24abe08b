import numpy as np
import pytest
import torch

from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.models.backbones import BACKBONES, build_model
from training.models.embedder import Embedder
from training.models.spec import ModelSpec


def test_round_trip_is_weights_only_and_reproduces_outputs(tmp_path):
    spec = ModelSpec(arch="smallcnn", embedding_dim=16, input_size=32, threshold=0.7, name="t")
    torch.manual_seed(0)
    model = build_model(spec).eval()
    path = save_checkpoint(tmp_path / "m.pt", Checkpoint(spec, model.state_dict(),
                                                         metrics={"acc": 0.5}))
    raw = torch.load(path, weights_only=True)  # must not need pickled classes
    assert raw["format"] == "imgsim.checkpoint/1" and raw["spec"]["threshold"] == 0.7
    ckpt = load_checkpoint(path)
    assert ckpt.spec == spec and ckpt.metrics == {"acc": 0.5}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ckpt.build()(x), model(x), atol=1e-6)


def test_load_rejects_non_checkpoint(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, p)
    with pytest.raises(ValueError, match="not an imgsim checkpoint"):
        load_checkpoint(p)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_every_backbone_gives_normalised_embeddings(arch):
    spec = ModelSpec(arch=arch, embedding_dim=8, input_size=64)
    model = build_model(spec).eval()
    with torch.no_grad():
        z = model(torch.randn(2, 3, 64, 64))
    assert z.shape == (2, 8)
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)


def test_unknown_arch_lists_valid():
    with pytest.raises(ValueError, match="resnet18"):
        build_model(ModelSpec(arch="vgg99", embedding_dim=8, input_size=32))


def test_embedder_preprocessing_travels_with_spec(tmp_path, digits_dir):
    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=24, resize_size=28)
    emb = Embedder(build_model(spec), spec)
    paths = sorted(digits_dir.glob("*/*.png"))[:5]
    v1 = emb.embed_paths(paths, batch_size=2)
    from PIL import Image
    v2 = emb.embed_images([Image.open(p) for p in paths])
    assert v1.shape == (5, 8) and v1.dtype == np.float32
    np.testing.assert_allclose(v1, v2, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1, atol=1e-5)
