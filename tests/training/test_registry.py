"""The one registry of network builders: one table per kind, lazy modules found by name."""

import sys

import pytest
import torch

from training.models import registry
from training.models.backbones import BACKBONES, MODEL_BUILDERS
from training.segmentation.models import ARCHITECTURES, SegModelSpec, build_segmenter


def test_each_kind_has_one_table():
    assert BACKBONES is registry.BUILDERS["backbone"]
    assert MODEL_BUILDERS is registry.BUILDERS["embedder"]
    assert ARCHITECTURES is registry.BUILDERS["segmenter"]
    assert set(registry.names("segmenter")) == {"unet", "segnet"}
    assert "smallcnn" in registry.names("backbone")


def test_a_lazy_architecture_is_listed_and_imported_when_asked_for(monkeypatch):
    monkeypatch.delitem(MODEL_BUILDERS, "ensemble", raising=False)
    monkeypatch.delitem(sys.modules, "training.models.ensemble", raising=False)
    assert "ensemble" in registry.names("embedder")  # listed before its module is imported
    build = registry.find("embedder", "ensemble")
    assert build is not None and "training.models.ensemble" in sys.modules
    assert build.__name__ == "build_ensemble"


def test_an_unknown_architecture_is_none():
    assert registry.find("segmenter", "resnet18") is None
    assert registry.find("backbone", "unet") is None


@pytest.mark.parametrize("arch", registry.names("segmenter"))
def test_every_segmenter_builds_from_its_spec(arch):
    model = build_segmenter(SegModelSpec(arch=arch, width=4, depth=2,
                                         upsampling="nearest")).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
