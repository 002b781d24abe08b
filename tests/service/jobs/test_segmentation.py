"""Segmentation: network structure, metrics against hand computations, augmentation,
overlap-tile inference, a tiny training run and the `imgsim segment` commands."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.conftest import shared_data
from training.segmentation.data import (
    AugmentConfig,
    Slice,
    augment_batch,
    load_isbi,
    parse_slices,
)
from training.segmentation.infer import predict_probs, tile_origins
from training.segmentation.metrics import (
    adapted_rand,
    cell_labels,
    foreground_iou,
    grow_cells,
    pixel_error,
    score_membranes,
)
from training.segmentation.models import (
    ARCHITECTURES,
    UPSAMPLERS,
    SegModelSpec,
    SegNet,
    UNet,
    UnpoolUp,
    build_segmenter,
)
from training.segmentation.weights import border_weights


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("upsampling", sorted(UPSAMPLERS))
def test_every_network_maps_images_to_k_class_logits(arch, upsampling):
    torch.manual_seed(0)
    model = build_segmenter(SegModelSpec(arch=arch, upsampling=upsampling, width=4, depth=2,
                                         num_classes=3, class_names=("a", "b", "c"))).eval()
    for h, w in [(32, 32), (36, 44)]:  # also sizes that are not multiples of 2**depth
        out = model(torch.randn(2, 1, h, w))
        assert out.shape == (2, 3, h, w)
        probs = out.softmax(1)
        assert torch.allclose(probs.sum(1), torch.ones(2, h, w), atol=1e-5)


def test_registries_name_the_valid_choices():
    with pytest.raises(ValueError, match="valid: nearest, transposed, unpool"):
        SegModelSpec(upsampling="bilinear")
    with pytest.raises(ValueError, match="valid: segnet, unet"):
        SegModelSpec(arch="fcn")


def test_unet_decoder_concatenates_the_encoder_features():
    torch.manual_seed(0)
    model = UNet(width=4, depth=2, upsampling="nearest").eval()
    skips, dec_inputs = [], []
    model.encoder.blocks[1].register_forward_hook(lambda m, i, o: skips.append(o.detach()))
    model.decoders[0].register_forward_hook(lambda m, i, o: dec_inputs.append(i[0].detach()))
    model(torch.randn(1, 1, 16, 16))
    skip, dec_in = skips[0], dec_inputs[0]
    assert dec_in.shape == (1, 16, 8, 8)  # 8 upsampled + 8 skip channels
    assert torch.equal(dec_in[:, 8:], skip)  # the second half is the encoder feature itself
    assert model.decoders[0][0].in_channels == 2 * skip.shape[1]


def test_unpool_puts_values_at_the_pooled_indices():
    x = torch.randn(1, 3, 8, 8)
    pooled, idx = nn.MaxPool2d(2, 2, return_indices=True)(x)
    up = UnpoolUp(3, 3)
    unpooled = up.unpool(pooled, idx)
    nz = unpooled != 0
    assert int(nz.sum()) == pooled.numel()  # one value per pooling window
    # every value sits exactly where its window's maximum was
    assert torch.equal(unpooled.flatten(2).gather(2, idx.flatten(2)), pooled.flatten(2))
    assert torch.equal(unpooled[nz], x[nz])


def test_segnet_decoder_unpools_with_the_encoder_switches():
    torch.manual_seed(0)
    model = SegNet(width=4, depth=2, upsampling="unpool").eval()
    pool_idx, unpooled = [], []
    model.encoder.pool.register_forward_hook(lambda m, i, o: pool_idx.append(o[1]))
    model.ups[0].up.unpool.register_forward_hook(lambda m, i, o: unpooled.append(o.detach()))
    model(torch.randn(1, 1, 16, 16))
    deepest = pool_idx[-1]  # the last encoder pooling feeds the first decoder level
    u = unpooled[0]
    nonzero = (u.flatten(2) != 0)
    allowed = torch.zeros_like(nonzero).scatter_(2, deepest.flatten(2), True)
    assert bool(nonzero.any()) and not bool((nonzero & ~allowed).any())


def test_pixel_error_and_iou():
    t = np.array([[1, 1, 0, 0]])
    p = np.array([[1, 0, 0, 1]])
    assert pixel_error(p, t) == 0.5
    assert foreground_iou(p, t) == pytest.approx(1 / 3)
    assert foreground_iou(np.zeros((2, 2), int), np.zeros((2, 2), int)) == 1.0


def test_rand_error_of_identical_segmentations_is_zero():
    rng = np.random.default_rng(0)
    membrane = rng.random((40, 40)) < 0.3
    gt = cell_labels(membrane)
    assert adapted_rand(gt, gt).error == pytest.approx(0.0)
    relabelled = np.where(gt > 0, gt + 100, 0)  # label values do not matter
    assert adapted_rand(relabelled, gt).error == pytest.approx(0.0)


def test_rand_error_matches_a_hand_computation():
    # ground truth: two cells of 4 pixels (labels 1, 2) and one ignored boundary pixel (0)
    gt = np.array([[1, 1, 0, 2, 2],
                   [1, 1, 0, 2, 2]])
    # prediction merges the two cells into one segment (7) and marks one pixel as boundary (0)
    seg = np.array([[7, 7, 7, 7, 7],
                    [7, 7, 7, 7, 0]])
    # restricted to gt > 0: n_ij = {(1,7): 4, (2,7): 3}, one singleton (gt 2, seg 0)
    # sum n_ij^2 = 16 + 9 + 1 = 26; sum_i a_i^2 = 16 + 16 = 32; sum_j b_j^2 = 7^2 + 1 = 50
    r = adapted_rand(seg, gt)
    p, rec = 26 / 50, 26 / 32
    assert r.precision == pytest.approx(p) and r.recall == pytest.approx(rec)
    assert r.error == pytest.approx(1 - 2 * p * rec / (p + rec))


def test_score_membranes_uses_cells_of_the_thresholded_map():
    mask = np.zeros((9, 9), int)
    mask[4, :] = 1  # a membrane line splits two cells
    prob = mask.astype(float) * 0.9
    s = score_membranes(prob, mask)
    assert s.pixel_error == 0 and s.foreground_iou == 1 and s.rand_error == pytest.approx(0)
    gap = prob.copy()
    gap[4, 4] = 0.1  # a one-pixel gap merges the two cells: Rand error rises, pixel error barely
    s2 = score_membranes(gap, mask)
    assert s2.pixel_error == pytest.approx(1 / 81) and s2.rand_error > 0.3


def test_grown_cells_take_the_membrane_pixels_nearest_to_them():
    labels = np.array([[1, 0, 0, 0, 0, 2]])
    np.testing.assert_array_equal(grow_cells(labels), [[1, 1, 1, 2, 2, 2]])
    none = np.zeros((3, 3), int)  # all membrane: nothing to grow
    np.testing.assert_array_equal(grow_cells(none), none)


def test_growing_cells_forgives_thick_membranes_but_not_gaps():
    mask = np.zeros((20, 20), int)
    mask[10, :] = 1  # the true membrane: one line between two cells
    thick = np.zeros((20, 20))
    thick[8:13, :] = 0.9  # predicted five pixels thick: singletons inside the true cells
    plain, grown = score_membranes(thick, mask), score_membranes(thick, mask, grow=True)
    assert plain.rand_error > 0.05 and grown.rand_error == pytest.approx(0)
    assert grown.pixel_error == plain.pixel_error == pytest.approx(80 / 400)
    gap = thick.copy()
    gap[8:13, 9] = 0.1  # a gap through it merges the two cells, grown or not
    assert score_membranes(gap, mask, grow=True).rand_error > 0.3


def test_border_weights_favour_thin_membranes_between_cells():
    m = np.zeros((40, 60), bool)
    m[:, 19:21] = True      # a thin membrane between two cells
    m[:, 35:55] = True      # a thick band
    w = border_weights(m, w0=10, sigma=5)
    assert w[20, 19] > 5 * w[20, 45]
    assert np.all(w[~m] == 1.0)


def test_augmentation_moves_image_and_mask_together():
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 96, 96, dtype=torch.long)
    mask[:, 20:40, 30:80] = 1
    mask[:, 60:70, :] = 1
    img, msk, _ = augment_batch(mask[:, None].float(), mask, AugmentConfig(brightness=0.0), gen,
                                out_size=64)
    assert img.shape == (2, 1, 64, 64) and msk.shape == (2, 64, 64)
    agree = ((img[:, 0] > 0.5).long() == msk).float().mean()
    assert agree > 0.97
    assert not torch.equal(msk[0], mask[0, 16:80, 16:80])  # it did deform


def test_tile_origins_cover_the_image():
    for length, tile, step in [(512, 256, 192), (100, 64, 32), (50, 64, 32)]:
        starts = tile_origins(length, tile, step)
        covered = np.zeros(max(length, tile), bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered[:length].all()


def test_overlap_tile_equals_whole_image_prediction_inside():
    torch.manual_seed(0)
    # receptive radius 3: with margin >= 3 each kept pixel sees exactly what it sees in the
    # whole-image forward pass (away from the image border, where padding differs)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    image = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    tiled = predict_probs(model, image, tile=32, margin=4)
    with torch.no_grad():
        whole = model(torch.from_numpy(image)[None, None]).softmax(1)[0].numpy()
    assert tiled.shape == (2, 70, 90)
    np.testing.assert_allclose(tiled[:, 3:-3, 3:-3], whole[:, 3:-3, 3:-3], atol=1e-5)


def test_parse_slices():
    assert parse_slices("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
    for bad in ["", "a-b", "5-2"]:
        with pytest.raises(ValueError):
            parse_slices(bad)


def _synthetic_slices(n: int, size: int = 64, seed: int = 0) -> list[Slice]:
    """Cells separated by dark random lines (membrane = 1), like a toy EM slice."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = np.zeros((size, size), np.int64)
        for _ in range(4):
            if rng.random() < 0.5:
                r = rng.integers(4, size - 4)
                m[r:r + 2, :] = 1
            else:
                c = rng.integers(4, size - 4)
                m[:, c:c + 2] = 1
        img = np.where(m == 1, 0.2, 0.8) + rng.normal(0, 0.05, m.shape)
        out.append(Slice(str(i), img.astype(np.float32), m))
    return out


@pytest.mark.slow
def test_tiny_training_beats_the_trivial_prediction(tmp_path):
    from training.checkpoint import load_seg_checkpoint
    from training.segmentation.train import SegTrainConfig, train_segmenter

    slices = _synthetic_slices(5)
    path = train_segmenter(SegTrainConfig(out=str(tmp_path), width=4, depth=2, tile=32,
                                          batch_size=4, steps=40, lr=1e-2, eval_tile=64,
                                          eval_margin=8, weight_map="balance"),
                           slices=(slices[:4], slices[4:]))
    ck = load_seg_checkpoint(path)
    val = ck.metrics["val"]
    trivial = float(slices[4].mask.mean())  # error of predicting no membrane at all
    assert val["pixel_error"] < trivial / 2
    assert ck.spec.arch == "unet" and ck.metrics["steps"] == 40
    assert torch.load(path, weights_only=True)["format"] == "imgsim.segmenter/1"


def _fake_isbi(root, slices):
    for sub in ["train/image", "train/label", "test"]:
        (root / sub).mkdir(parents=True)
    for s in slices:
        img = Image.fromarray((s.image.clip(0, 1) * 255).astype(np.uint8))
        img.save(root / "train/image" / f"{s.name}.png")
        img.save(root / "test" / f"{s.name}.png")
        Image.fromarray(np.where(s.mask == 1, 0, 255).astype(np.uint8)).save(
            root / "train/label" / f"{s.name}.png")


@pytest.mark.slow
def test_segment_cli_train_predict_eval(tmp_path, capsys):
    from imgsim.cli import main

    data = tmp_path / "isbi"
    _fake_isbi(data, _synthetic_slices(4))
    out = tmp_path / "model"
    assert main(["segment", "train", "--data", str(data), "--out", str(out), "--width", "4",
                 "--depth", "2", "--tile", "32", "--batch-size", "2", "--steps", "5",
                 "--train-slices", "0-2", "--val-slices", "3", "--arch", "segnet"]) == 0
    assert "Rand error" in capsys.readouterr().out
    ck = str(out / "model.pt")
    assert main(["segment", "predict", str(data / "test/3.png"), "--checkpoint", ck,
                 "--out", str(tmp_path / "pred"), "--tile", "48", "--margin", "8"]) == 0
    mask = np.asarray(Image.open(tmp_path / "pred/3_mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(tmp_path / "pred/3_overlay.png").mode == "RGB"
    assert main(["segment", "eval", "--checkpoint", ck, "--data", str(data), "--slices", "3",
                 "--out", str(tmp_path / "ev"), "--tile", "48", "--margin", "8"]) == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and (tmp_path / "ev/slice3_overlay.png").is_file()
    assert main(["segment", "eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err


def test_evaluation_scores_grown_cells_when_asked(tmp_path, monkeypatch):
    """`segment eval --grow-cells` / the job's grow_cells: a prediction whose membranes are
    right but three times too thick loses most of its Rand error once cells are grown."""
    from types import SimpleNamespace

    from scipy import ndimage

    import training.segmentation.predict as predict

    data = tmp_path / "isbi"
    slices = _synthetic_slices(2)
    _fake_isbi(data, slices)
    truth = {s.image.tobytes(): s.mask for s in load_isbi(data, parse_slices("0-1"))}
    monkeypatch.setattr(predict, "load_seg_checkpoint", lambda path: SimpleNamespace(
        build=lambda: None, mean=0.0, std=1.0))
    monkeypatch.setattr(predict, "predict_probs", lambda model, image, **kw: (None, ndimage
                        .binary_dilation(truth[image.tobytes()], iterations=1).astype(float)))
    plain, _ = predict.evaluate_slices("x.pt", data, "0-1", tmp_path / "a")
    grown, rows = predict.evaluate_slices("x.pt", data, "0-1", tmp_path / "b", grow_cells=True)
    assert grown["pixel_error"] == plain["pixel_error"] > 0
    assert grown["rand_error"] < plain["rand_error"] / 2 and len(rows) == 2


@pytest.mark.data
def test_isbi_labels_are_read_as_membrane_masks():
    from training.segmentation.data import load_isbi

    s = load_isbi(shared_data("isbi2012"), [0])[0]
    assert s.image.shape == s.mask.shape == (512, 512)
    assert 0.1 < s.mask.mean() < 0.35  # membranes are the minority class
    assert cell_labels(s.mask.astype(bool)).max() > 50  # many separate cells
