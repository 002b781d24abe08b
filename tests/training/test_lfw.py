import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsim.cli import main
from tests.conftest import shared_data
from training.evaluation.cli import parse_folds
from training.evaluation.lfw import (
    equal_error_rate,
    evaluate_lfw,
    person_of,
    read_lfw_pairs,
    view2_accuracy,
)
from training.models.backbones import build_model
from training.models.embedder import Embedder
from training.models.spec import ModelSpec


def _ten_folds(errors_per_fold):
    """10 folds x (30 genuine at d=0.1 + 30 impostors at d=0.9); fold f has errors_per_fold[f-1]
    genuine pairs pushed to d=0.95, wrong at any threshold between the two clusters."""
    dist, same, fold = [], [], []
    for f, k in enumerate(errors_per_fold, start=1):
        dist += [0.95] * k + [0.1] * (30 - k) + [0.9] * 30
        same += [True] * 30 + [False] * 30
        fold += [f] * 60
    return np.array(dist), np.array(same), np.array(fold)


def test_view2_known_accuracy_mean_and_std():
    errors = [0, 1, 2, 3, 4, 5, 6, 0, 0, 0]
    dist, same, fold = _ten_folds(errors)
    r = view2_accuracy(dist, same, fold)
    expected = 1 - np.array(errors) / 60
    np.testing.assert_allclose(r["fold_accuracies"], expected)
    assert r["accuracy_mean"] == pytest.approx(expected.mean())
    assert r["accuracy_std"] == pytest.approx(expected.std(ddof=1))
    assert all(0.1 < t < 0.9 for t in r["thresholds"])
    assert r["n_pairs"] == 600


def test_view2_threshold_never_sees_the_test_fold():
    # fold 1 lives at a different scale: a threshold chosen on fold 1 itself would score 100%,
    # the one chosen on folds 2-10 (between 0.1 and 0.9) rejects every pair of fold 1.
    dist, same, fold = _ten_folds([0] * 10)
    dist[fold == 1] += 1.0
    r = view2_accuracy(dist, same, fold)
    assert r["fold_accuracies"][0] == pytest.approx(0.5)
    assert r["thresholds"][0] < 0.9


def test_view2_subset_of_folds_uses_only_those_folds():
    dist, same, fold = _ten_folds([0, 0, 0, 0, 0, 3, 3, 3, 3, 3])
    dist[fold <= 5] = 5.0  # garbage in folds 1-5 must not influence folds 6-10
    r = view2_accuracy(dist, same, fold, folds=range(6, 11))
    assert r["folds"] == [6, 7, 8, 9, 10] and r["n_pairs"] == 300
    assert r["accuracy_mean"] == pytest.approx(1 - 3 / 60)
    with pytest.raises(ValueError, match="two folds"):
        view2_accuracy(dist, same, fold, folds=[3])
    with pytest.raises(ValueError, match="no pairs"):
        view2_accuracy(dist, same, fold, folds=[3, 11])


def test_auc_tar_eer_known_values():
    # AUC = P(impostor farther than genuine): genuine {0.1, 0.4} vs impostor {0.3, 0.5} -> 3/4
    dist = np.array([0.1, 0.4, 0.3, 0.5, 0.1, 0.4, 0.3, 0.5])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    r = view2_accuracy(dist, same, np.array([1, 1, 1, 1, 2, 2, 2, 2]))
    assert r["auc"] == pytest.approx(0.75)
    assert r["eer"] == pytest.approx(0.5)
    # 2000 impostors: FAR 1e-3 allows 2 of them; half the genuine pairs are nearer than all
    imp = np.linspace(1.0, 2.0, 2000)
    gen = np.r_[np.full(500, 0.5), np.full(500, 1.5)]
    dist = np.r_[gen, imp]
    same = np.r_[np.ones(1000, bool), np.zeros(2000, bool)]
    r = view2_accuracy(dist, same, np.arange(3000) % 2 + 1)
    assert r["tar_at_far_1e-3"] == pytest.approx(0.5)
    assert r["auc"] == pytest.approx(0.5 * 1 + 0.5 * 0.5)  # genuine at 1.5 beat half the impostors
    # perfect separation
    assert equal_error_rate(np.r_[np.zeros(5), np.ones(5)], np.r_[np.ones(5), np.zeros(5)] > 0) == 0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _touch_images(root: Path, names: dict[str, int]) -> None:
    for name, n in names.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            Image.new("RGB", (8, 8)).save(root / name / f"{name}_{i:04d}.jpg")


def test_read_pairs_view2_and_view1(tmp_path):
    imgs = tmp_path / "lfw-deepfunneled"
    _touch_images(imgs, {"Ann": 3, "Bob": 2, "Cy": 1, "Di": 2})
    p = _write(tmp_path / "pairs.txt",
               "2\t1\nAnn\t1\t2\nAnn\t3\tCy\t1\nBob\t1\t2\nBob\t2\tDi\t1\n")
    pairs = read_lfw_pairs(p, imgs)
    assert pairs.same.tolist() == [True, False, True, False]
    assert pairs.fold.tolist() == [1, 1, 2, 2]
    assert pairs.paths_a[1] == str(imgs / "Ann" / "Ann_0003.jpg")
    assert pairs.paths_b[1] == str(imgs / "Cy" / "Cy_0001.jpg")
    assert person_of(pairs.paths_b[3]) == "Di"
    v1 = read_lfw_pairs(_write(tmp_path / "dev.txt", "1\nAnn\t1\t2\nBob\t1\tDi\t2\n"), imgs)
    assert v1.same.tolist() == [True, False] and v1.fold.tolist() == [1, 1]


def test_read_pairs_errors(tmp_path):
    imgs = tmp_path / "lfw-deepfunneled"
    _touch_images(imgs, {"Ann": 2})
    with pytest.raises(ValueError, match="found 1"):
        read_lfw_pairs(_write(tmp_path / "a.txt", "1 1\nAnn 1 2\n"), imgs)
    with pytest.raises(ValueError, match="impostor"):
        read_lfw_pairs(_write(tmp_path / "b.txt", "1 1\nAnn 1 2\nAnn 1 2\n"), imgs)
    with pytest.raises(ValueError, match="bad header"):
        read_lfw_pairs(_write(tmp_path / "c.txt", "ten\nAnn 1 2\n"), imgs)
    with pytest.raises(FileNotFoundError, match="Bob_0001"):
        read_lfw_pairs(_write(tmp_path / "d.txt", "1\nAnn 1 2\nAnn 1 Bob 1\n"), imgs)
    with pytest.raises(FileNotFoundError):
        read_lfw_pairs(tmp_path / "missing.txt", imgs)


def test_parse_folds():
    assert parse_folds("6-10") == [6, 7, 8, 9, 10]
    assert parse_folds("1,3,5-6") == [1, 3, 5, 6]
    for bad in ["x", "5-3", "0-2", ""]:
        with pytest.raises(ValueError, match="--folds"):
            parse_folds(bad)


def test_evaluate_lfw_embeds_each_image_once_and_flip_tta_averages(fake_lfw):
    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=32)
    import torch

    torch.manual_seed(0)
    embedder = Embedder(build_model(spec), spec)
    calls = []
    real = embedder.embed_paths

    def spy(paths, **kw):
        calls.append((list(paths), kw))
        return real(paths, **kw)

    embedder.embed_paths = spy
    r = evaluate_lfw(embedder, fake_lfw, num_workers=0)
    assert r["n_pairs"] == 20 and len(r["fold_accuracies"]) == 2
    assert len(calls) == 1 and len(calls[0][0]) == len(set(calls[0][0]))
    r_tta = evaluate_lfw(embedder, fake_lfw, flip_tta=True, num_workers=0)
    assert calls[-1][1]["flip_tta"] is True and r_tta["n_pairs"] == 20

    # flip TTA == normalised mean of the image's embedding and its mirror image's embedding
    img = fake_lfw / "lfw-deepfunneled" / "D3" / "D3_0001.jpg"
    mirror = fake_lfw / "mirror.png"  # lossless, so the mirror holds exactly the flipped pixels
    Image.open(img).transpose(Image.FLIP_LEFT_RIGHT).save(mirror)
    a, b = real([img, mirror])
    expected = (a + b) / np.linalg.norm(a + b)
    got = real([img], flip_tta=True)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.linalg.norm(got) == pytest.approx(1, abs=1e-5)
    plain, flipped = embedder.embed_paths_and_flips([img])
    np.testing.assert_allclose(got, embedder.combine_flips(plain, flipped)[0], atol=1e-6)


def test_eval_lfw_cli_writes_json_and_roc(fake_lfw, tiny_checkpoint, tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "roc.png"
    code = main(["eval", "lfw", "--checkpoint", str(tiny_checkpoint), "--data", str(fake_lfw),
                 "--json", str(out_json), "--roc-png", str(out_png), "--num-workers", "0"])
    assert code == 0
    text = capsys.readouterr().out
    assert "plain" in text and "flip_tta" in text
    r = json.loads(out_json.read_text())
    for key in ["accuracy_mean", "accuracy_std", "auc", "tar_at_far_1e-3", "eer", "thresholds"]:
        assert key in r["plain"] and key in r["flip_tta"]
    assert r["plain"]["n_pairs"] == 20
    assert out_png.stat().st_size > 1000
    code = main(["eval", "lfw", "--checkpoint", str(tiny_checkpoint), "--data", str(fake_lfw),
                 "--folds", "6-10"])
    assert code == 2 and "fold(s)" in capsys.readouterr().err


@pytest.mark.data
def test_real_lfw_pair_files_follow_the_protocol():
    root = shared_data("lfw")
    imgs = root / "lfw-deepfunneled"
    pairs = read_lfw_pairs(root / "pairs.txt", imgs)
    assert len(pairs) == 6000 and sorted(set(pairs.fold.tolist())) == list(range(1, 11))
    for f in range(1, 11):
        sel = pairs.fold == f
        assert pairs.same[sel].sum() == 300 and (~pairs.same[sel]).sum() == 300
    people = {}
    for a, b, f in zip(pairs.paths_a, pairs.paths_b, pairs.fold, strict=True):
        for p in (a, b):
            people.setdefault(person_of(p), set()).add(int(f))
    assert all(len(fs) == 1 for fs in people.values())  # people never cross folds
    genuine = [person_of(a) == person_of(b) for a, b in zip(pairs.paths_a, pairs.paths_b,
                                                               strict=True)]
    assert np.array_equal(np.array(genuine), pairs.same)
    train = read_lfw_pairs(root / "pairsDevTrain.txt", imgs)
    test = read_lfw_pairs(root / "pairsDevTest.txt", imgs)
    assert (len(train), int(train.same.sum()), len(test), int(test.same.sum())) == \
        (2200, 1100, 1000, 500)
    assert set(train.fold.tolist()) == {1}
