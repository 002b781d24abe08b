from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import shared_data
from training.data.datasets import FORMATS, cub_split, folder_split, lfw_split, load_split
from training.data.transforms import AUGMENTATIONS, get_augmentation
from training.miners.in_batch import AdjacentPairsMiner
from training.models.spec import ModelSpec
from training.samplers.pk import PairSampler


def _fake_cub(root, n_classes=4, per_class=3):
    lines_img, lines_lab, lines_cls = [], [], []
    for c in range(n_classes):
        name = f"Bird_{c}"
        lines_cls.append(f"{c}, {name}")
        (root / "images" / name).mkdir(parents=True)
        for j in range(per_class):
            i = c * per_class + j
            Image.new("RGB", (20, 20), (c * 40, j * 40, 0)).save(root / "images" / name / f"{j:04d}.jpg")
            lines_img.append(f"{i}, {name}/{j:04d}.jpg")
            lines_lab.append(f"{i}, {c}")
    (root / "images.txt").write_text("\n".join(lines_img) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines_lab) + "\n")
    (root / "classes.txt").write_text("\n".join(lines_cls) + "\n")
    return root


def test_cub_split_first_half_of_classes_trains(tmp_path):
    split = cub_split(_fake_cub(tmp_path))
    assert {s.label for s in split.train} == {"Bird_0", "Bird_1"}
    assert {s.label for s in split.test} == {"Bird_2", "Bird_3"}
    assert len(split.train) == len(split.test) == 6
    assert all(p.endswith(".jpg") for p in (s.path for s in split.train))
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        cub_split(tmp_path)


def test_folder_split_and_registry(digits_dir):
    all_ = folder_split(digits_dir)
    assert len(all_.train) == 400 and all_.test == []
    held = folder_split(digits_dir, test_fraction=0.3, seed=1)
    assert len({s.label for s in held.test}) == 3
    assert not {s.label for s in held.train} & {s.label for s in held.test}
    with pytest.raises(ValueError, match="cub"):
        load_split("imagenet", digits_dir)
    assert set(FORMATS) == {"folder", "cub", "lfw"}


def test_lfw_split_is_identity_disjoint(fake_lfw):
    split = lfw_split(fake_lfw, train_folds=(1,))
    assert {s.label for s in split.train} == {f"D{d}" for d in range(5)}
    assert {s.label for s in split.test} == {f"D{d}" for d in range(5, 10)}
    assert split.augment == "face" and split.resize_ratio == 2.0


@pytest.mark.data
def test_real_cub_and_lfw_splits():
    cub = load_split("cub", shared_data("cub100"))
    assert len({s.label for s in cub.train}) == 50 and len({s.label for s in cub.test}) == 50
    assert len(cub.train) + len(cub.test) == 5902
    assert not {s.label for s in cub.train} & {s.label for s in cub.test}
    assert cub.train[0].label == "Black_footed_Albatross"  # class 0
    lfw = load_split("lfw", shared_data("lfw"))
    assert not {s.label for s in lfw.train} & {s.label for s in lfw.test}
    assert (len(lfw.train), len({s.label for s in lfw.train})) == (5373, 2086)


def test_pair_sampler_positive_fraction_and_miner():
    labels = np.repeat(np.arange(6), 5)
    sampler = PairSampler(labels, pairs_per_batch=10, positive_fraction=0.3, num_batches=4)
    batches = list(sampler)
    assert len(batches) == 4 and all(len(b) == 20 for b in batches)
    for b in batches:
        y = torch.as_tensor(labels[b])
        a1, p, a2, n = AdjacentPairsMiner()(torch.zeros(20, 2), y)
        assert len(a1) == 3 and len(a2) == 7  # 30% genuine
        assert (y[a1] == y[p]).all() and (y[a2] != y[n]).all()
        assert ((p - a1) == 1).all() and (a1 % 2 == 0).all()
        assert all(b[i] != b[i + 1] for i in range(0, 20, 2))  # never an image with itself
    sampler.set_epoch(1)
    assert list(sampler) != batches
    with pytest.raises(ValueError, match="positive_fraction"):
        PairSampler(labels, pairs_per_batch=4, positive_fraction=1.5)
    with pytest.raises(ValueError, match="two classes"):
        PairSampler([0, 0, 0], pairs_per_batch=2)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_every_augmentation_gives_model_input(name):
    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=32, resize_size=64)
    x = get_augmentation(name, spec)(Image.new("RGB", (100, 80), (200, 10, 10)))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_face_augmentation_stays_on_the_face():
    # green face in the middle 64% of a red background: the eval crop (resize 2x input,
    # centre crop input) sees only green, and the face augmentation must too
    img = Image.new("RGB", (250, 250), (255, 0, 0))
    img.paste((0, 255, 0), (45, 45, 205, 205))
    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=64, resize_size=128,
                     mean=(0, 0, 0), std=(1, 1, 1))
    face, crop = get_augmentation("face", spec), get_augmentation("crop", spec)
    torch.manual_seed(0)
    red = Counter()
    for _ in range(20):
        red["face"] += int((face(img)[0] > 0.5).sum())
        red["crop"] += int((crop(img)[0] > 0.5).sum())
    assert red["face"] == 0 and red["crop"] > 0
    with pytest.raises(ValueError, match="face"):
        get_augmentation("rotate", spec)
