"""dlib import: the serialisation reader, the PyTorch port (parity with dlib-bin), the checkpoint and CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imgsim.cli import main as imgsim_main
from training.checkpoint import load_checkpoint, save_checkpoint
from training.dlib.importer import FACE_MODEL_FILE, import_face_resnet
from training.dlib.model import DlibFaceResNet, add_zero_padded, state_dict_from_dlib
from training.dlib.network import (
    DlibFormatError,
    check_face_resnet,
    face_resnet_tokens,
    parse_network,
    write_face_resnet,
)
from training.dlib.paths import models_dir
from training.dlib.serialize import DlibReader, DlibWriter
from training.dlib.threshold import (
    DLIB_UNIT_THRESHOLD,
    agreeing_unit_threshold,
    l2_normalise,
    unit_threshold,
)
from training.models.embedder import Embedder

MEAN = (122.782, 117.001, 104.298)


def _random_params(seed: int = 0) -> list[np.ndarray | None]:
    """Plausible weights for every layer of dlib's face ResNet (He-scaled convs, affine
    gammas near 1), so that activations neither vanish nor explode over 29 convs."""
    rng = np.random.default_rng(seed)
    params, ch = [], 3
    for tok in face_resnet_tokens():
        kind = tok[0]
        if kind == "con":
            n, k = tok[1], tok[2]
            w = rng.normal(0, math.sqrt(2 / (ch * k * k)) * 0.5, (n, ch, k, k))
            params.append(np.concatenate([w.ravel(), rng.normal(0, 0.05, n)]).astype(np.float32))
            ch = n
        elif kind == "affine":
            params.append(np.concatenate([rng.uniform(0.5, 1.5, ch),
                                          rng.normal(0, 0.1, ch)]).astype(np.float32))
        elif kind == "fc":
            params.append(rng.normal(0, 0.1, ch * tok[1]).astype(np.float32))
        elif kind not in ("tag", "skip"):
            params.append(None)
    return params


@pytest.fixture(scope="module")
def synthetic_dat(tmp_path_factory):
    path = tmp_path_factory.mktemp("dlib") / "face_resnet_random.dat"
    path.write_bytes(write_face_resnet(_random_params(), mean=MEAN))
    return path


def _chips(n: int, seed: int = 1) -> np.ndarray:
    """(n, 150, 150, 3) uint8: smooth random images (closer to photos than white noise)."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.uniform(0, 255, (n, 3, 12, 12)).astype(np.float32))
    big = torch.nn.functional.interpolate(small, size=150, mode="bilinear", align_corners=False)
    noise = torch.from_numpy(rng.normal(0, 8, (n, 3, 150, 150)).astype(np.float32))
    return (big + noise).clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()


def _to_input(chips: np.ndarray, mean=MEAN) -> torch.Tensor:
    x = (chips.astype(np.float32) - np.array(mean, np.float32)) / 256.0
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


# --- serialisation -----------------------------------------------------------------------------


def test_integer_encoding_matches_dlib_bytes():
    w = DlibWriter()
    for v in (2, -10, 0, 300):
        w.int(v)
    # control byte = byte count | 0x80 for negatives, then little-endian magnitude
    assert w.getvalue() == b"\x01\x02" + b"\x81\x0a" + b"\x01\x00" + b"\x02\x2c\x01"


def test_reader_decodes_dlib_floats_and_round_trips_everything():
    # 0.6 as dlib stores dist_thresh in the face model: mantissa 0x99999a, exponent -24
    r = DlibReader(b"\x03\x9a\x99\x99\x81\x18")
    assert r.float() == pytest.approx(0.6, abs=1e-7) and r.at_end
    w = DlibWriter()
    values = [0.0, 0.04, -3.25, 1e-30, 123456.789, math.inf, -math.inf]
    for v in values:
        w.float(v)
    w.float(math.nan)
    w.string("con_4")
    w.bool(True)
    w.int(-(2 ** 62))
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7
    w.tensor(arr)
    w.tensor(arr, version=1)
    r = DlibReader(w.getvalue())
    assert [r.float() for _ in values] == values
    assert math.isnan(r.float())
    assert r.string() == "con_4" and r.bool() is True and r.int() == -(2 ** 62)
    np.testing.assert_array_equal(r.tensor(), arr)
    np.testing.assert_allclose(r.tensor(), arr, rtol=1e-7)
    assert r.at_end


@pytest.mark.parametrize("data, message", [(b"\x03\x01", "truncated"),
                                           (b"\x0c\x01", "control byte"),
                                           (b"", "truncated")])
def test_reader_rejects_malformed_integers(data, message):
    with pytest.raises(DlibFormatError, match=message):
        DlibReader(data).int()


# --- network structure ----------------------------------------------------------------------------


def test_parse_recovers_structure_means_and_weights(synthetic_dat):
    params = _random_params()
    net = parse_network(synthetic_dat.read_bytes())
    check_face_resnet(net)
    assert net.input_mean == pytest.approx(MEAN)
    assert net.loss_params == pytest.approx({"margin": 0.04, "dist_thresh": 0.6})
    assert [layer.kind for layer in net.layers][:4] == ["con", "affine", "relu", "max_pool"]
    with_params = [(p, layer) for p, layer in zip(params, net.layers, strict=True)
                   if p is not None]
    assert len(with_params) == 29 + 29 + 1  # convs, affines, fc
    for p, layer in with_params:
        np.testing.assert_array_equal(layer.params, p)


def test_truncated_or_foreign_files_are_refused(synthetic_dat):
    data = synthetic_dat.read_bytes()
    with pytest.raises(DlibFormatError, match="truncated"):
        parse_network(data[: len(data) // 2])
    net = parse_network(data)
    net.layers[4].attrs["num_filters"] = 16  # a network that is not dlib's anet_type
    with pytest.raises(DlibFormatError, match="layer 4"):
        check_face_resnet(net)


def test_zero_padded_add_pads_channels_rows_and_columns_at_the_high_end():
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 1, 4, 4), 10.0)
    out = add_zero_padded(a, b)
    assert out.shape == (1, 2, 4, 4)
    assert out[0, 0, :3, :3].eq(11).all() and out[0, 0, 3, :].eq(10).all()
    assert out[0, 1, :3, :3].eq(1).all() and out[0, 1, 3, :].eq(0).all()


# --- the port against dlib itself ---------------------------------------------------------------


def _dlib_descriptors(dat, chips: np.ndarray) -> np.ndarray:
    dlib = pytest.importorskip("dlib", reason="dlib-bin (dev extra) is needed for parity tests")
    model = dlib.face_recognition_model_v1(str(dat))
    return np.array([np.array(model.compute_face_descriptor(np.ascontiguousarray(c)))
                     for c in chips])


def _port(dat) -> tuple[DlibFaceResNet, tuple]:
    net = parse_network(dat.read_bytes())
    model = DlibFaceResNet()
    model.load_state_dict(state_dict_from_dlib(net))
    return model.eval(), net.input_mean


def test_port_matches_dlib_on_a_file_written_by_our_writer(synthetic_dat):
    chips = _chips(3)
    expected = _dlib_descriptors(synthetic_dat, chips)  # dlib loads our writer's bytes
    model, mean = _port(synthetic_dat)
    with torch.no_grad():
        ours = model(_to_input(chips, mean)).numpy()
    assert np.abs(expected).max() > 0.05  # non-trivial outputs
    assert np.abs(ours - expected).max() < 1e-5


def _real_dat():
    mdir = models_dir()
    if mdir is None or not (mdir / FACE_MODEL_FILE).is_file():
        pytest.skip("face_recognition_models (dev extra) is not installed")
    return mdir / FACE_MODEL_FILE


def test_port_of_the_real_face_model_matches_dlib_within_1e5():
    dat = _real_dat()
    chips = _chips(4, seed=7)
    expected = _dlib_descriptors(dat, chips)
    model, mean = _port(dat)
    assert mean == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    with torch.no_grad():
        ours = model(_to_input(chips, mean)).numpy()
    assert np.abs(ours - expected).max() < 1e-5
    net = parse_network(dat.read_bytes())
    folded = sum(layer.params.size for layer in net.layers if layer.kind in ("con", "fc"))
    assert sum(p.numel() for p in model.parameters()) == folded  # affines live in the convs


# --- checkpoint, embedder, CLI --------------------------------------------------------------------


def test_checkpoint_round_trip_and_embedder_reproduce_dlib_normalisation(synthetic_dat, tmp_path):
    from PIL import Image

    ckpt = import_face_resnet(synthetic_dat, face_align=None, threshold=0.55)
    path = save_checkpoint(tmp_path / "dlib.pt", ckpt)
    loaded = load_checkpoint(path)  # builds via MODEL_BUILDERS without importing training.dlib
    # issue 16: unit descriptors, and the threshold is a distance between unit vectors
    assert loaded.spec.arch == "dlib_resnet" and loaded.spec.metric == "cosine"
    assert loaded.spec.threshold == 0.55 and loaded.spec.input_size == 150
    assert torch.load(path, weights_only=True)["threshold_units"] == "unit"
    chips = _chips(2, seed=3)
    emb = Embedder.from_checkpoint(path).embed_images([Image.fromarray(c) for c in chips])
    model, mean = _port(synthetic_dat)
    with torch.no_grad():
        direct = model(_to_input(chips, mean)).numpy()
    assert not np.allclose(np.linalg.norm(direct, axis=1), 1.0, atol=1e-3)  # dlib's raw
    np.testing.assert_allclose(emb, l2_normalise(direct), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def _write_pre_issue16_checkpoint(dat, path, *, face_align=None, threshold=0.6):
    """A dlib checkpoint as imgsim wrote it before issue 16: metric euclidean (raw
    descriptors), dlib's raw threshold, no threshold_units field."""
    from dataclasses import replace

    ckpt = import_face_resnet(dat, face_align=face_align)
    spec = replace(ckpt.spec, metric="euclidean", threshold=threshold).to_dict()
    torch.save({"format": "imgsim.checkpoint/1", "spec": spec, "state_dict": ckpt.state_dict,
                "config": ckpt.config, "metrics": {}, "extra": {}}, path)
    return path


def test_a_pre_issue16_dlib_checkpoint_loads_with_unit_rows_and_a_converted_threshold(
        synthetic_dat, tmp_path):
    from PIL import Image

    path = _write_pre_issue16_checkpoint(synthetic_dat, tmp_path / "old.pt", threshold=0.6)
    loaded = load_checkpoint(path)
    assert loaded.spec.metric == "cosine"
    assert loaded.spec.threshold == pytest.approx(DLIB_UNIT_THRESHOLD)
    emb = Embedder.from_checkpoint(path).embed_images([Image.fromarray(c) for c in _chips(2)])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    other = _write_pre_issue16_checkpoint(synthetic_dat, tmp_path / "o.pt", threshold=0.5)
    assert load_checkpoint(other).spec.threshold == pytest.approx(unit_threshold(0.5))
    # a checkpoint saved again records its units, and is not converted twice
    again = save_checkpoint(tmp_path / "again.pt", loaded)
    assert load_checkpoint(again).spec.threshold == loaded.spec.threshold


def test_agreeing_unit_threshold_reproduces_raw_verdicts_for_equal_norms():
    rng = np.random.default_rng(0)
    a = l2_normalise(rng.normal(size=(300, 16))) * 0.8
    b = l2_normalise(a + rng.normal(0, 0.2, size=(300, 16))) * 0.8
    thr, agree = agreeing_unit_threshold(a, b, 0.3)
    assert agree == 1.0  # d_unit = d_raw / 0.8 exactly: a monotone map
    assert thr == pytest.approx(0.3 / 0.8, abs=0.02)


def test_import_dlib_cli_thresholds(synthetic_dat, tmp_path):
    out = tmp_path / "m.pt"
    assert imgsim_main(["import-dlib", "--output", str(out), "--dat", str(synthetic_dat),
                        "--face-align", "none"]) == 0
    assert load_checkpoint(out).spec.threshold == pytest.approx(DLIB_UNIT_THRESHOLD)
    assert imgsim_main(["import-dlib", "--output", str(out), "--dat", str(synthetic_dat),
                        "--face-align", "none", "--dlib-threshold", "0.5"]) == 0
    assert load_checkpoint(out).spec.threshold == pytest.approx(unit_threshold(0.5))
    assert imgsim_main(["import-dlib", "--output", str(out), "--dat", str(synthetic_dat),
                        "--threshold", "0.4", "--dlib-threshold", "0.5"]) == 2


def test_imgsim_embed_rows_of_the_real_dlib_checkpoint_have_norm_1(tmp_path):
    from PIL import Image

    pytest.importorskip("dlib", reason="dlib-bin (dev extra) runs dlib5's HOG detector")
    dat = _real_dat()
    ckpt = tmp_path / "dlib.pt"
    assert imgsim_main(["import-dlib", "--output", str(ckpt), "--dat", str(dat)]) == 0
    paths = []
    for i, chip in enumerate(_chips(3, seed=21)):  # no face: dlib5 falls back to the fixed crop
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(chip).resize((250, 250)).save(paths[-1])
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    out = tmp_path / "out.npy"
    assert imgsim_main(["embed", "--checkpoint", str(ckpt), "--list", str(listing),
                        "--output", str(out), "--num-workers", "0"]) == 0
    rows = np.load(out)
    assert rows.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def _lfw_root():
    from training.evaluation.lfw import resolve_lfw_root
    from training.settings import data_root

    try:
        root = resolve_lfw_root(data_root())
    except FileNotFoundError:
        pytest.skip("LFW is not under $IMGSIM_DATA (needed for the same-verdicts check)")
    if not (root / "pairsDevTest.txt").is_file():
        pytest.skip("LFW View 1 pairsDevTest.txt is not under $IMGSIM_DATA")
    return root


def test_converted_threshold_gives_the_same_verdicts_on_real_lfw_pairs(tmp_path):
    """pairsDevTest (not the calibration set): 40 genuine + 40 impostor pairs, lfw-fixed chips,
    raw descriptors at dlib's 0.6 vs the old checkpoint loaded now (unit rows, converted
    threshold). The conversion is not exact (benchmarks/dlib_unit_threshold.py measured
    SAME_VERDICTS_DEV_TEST on the whole of pairsDevTest), so at most 1 pair in 80 may differ."""
    from training.evaluation.lfw import IMAGES_DIR, read_lfw_pairs

    root = _lfw_root()
    pairs = read_lfw_pairs(root / "pairsDevTest.txt", root / IMAGES_DIR)
    pick = np.r_[0:40, 500:540]
    a = [pairs.paths_a[i] for i in pick]
    b = [pairs.paths_b[i] for i in pick]
    old = _write_pre_issue16_checkpoint(_real_dat(), tmp_path / "old.pt", face_align="lfw-fixed")
    emb = Embedder.from_checkpoint(old)
    ua, ub = emb.embed_paths(a), emb.embed_paths(b)
    model, _ = _port(_real_dat())  # raw descriptors of the same chips, dlib's way
    raw = Embedder(model, replace_metric(emb.spec))
    ra, rb = raw.embed_paths(a), raw.embed_paths(b)
    raw_same = np.linalg.norm(ra - rb, axis=1) <= 0.6
    unit_same = np.linalg.norm(ua - ub, axis=1) <= emb.spec.threshold
    assert np.linalg.norm(ua, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert (raw_same != unit_same).sum() <= 3
    assert (raw_same == pairs.same[pick]).mean() > 0.9  # the raw verdicts are good ones


def replace_metric(spec):
    from dataclasses import replace

    return replace(spec, metric="euclidean", threshold=0.6)


def test_import_dlib_cli(synthetic_dat, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert imgsim_main(["import-dlib", "--output", str(out), "--dat", str(synthetic_dat),
                        "--face-align", "lfw-fixed"]) == 0
    assert load_checkpoint(out).spec.face_align == "lfw-fixed"
    assert imgsim_main(["import-dlib", "--output", str(out), "--dat", str(synthetic_dat),
                        "--on-miss", "require"]) == 0
    spec = load_checkpoint(out).spec
    assert (spec.face_align, spec.face_on_miss, spec.requires_face) == ("mtcnn5", "require", True)
    assert imgsim_main(["import-dlib", "--output", str(out), "--dat",
                        str(tmp_path / "missing.dat")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x01\x01\x01\x05hello")
    assert imgsim_main(["import-dlib", "--output", str(out), "--dat", str(bad)]) == 2
    assert "loss" in capsys.readouterr().err


@pytest.mark.slow
def test_training_can_start_from_an_imported_checkpoint(synthetic_dat, tmp_path):
    from PIL import Image

    from training.engine.train import TrainConfig, train

    start = save_checkpoint(tmp_path / "start.pt",
                            import_face_resnet(synthetic_dat, face_align="lfw-fixed"))
    data = tmp_path / "faces"
    for c in range(4):  # 4 "people" x 3 images
        (data / f"p{c}").mkdir(parents=True)
        for i, chip in enumerate(_chips(3, seed=10 + c)):
            Image.fromarray(chip).resize((250, 250)).save(data / f"p{c}" / f"{i}.png")
    out = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), init=str(start),
                            loss="triplet", epochs=1, steps_per_epoch=2, p=2, k=2, lr=1e-3,
                            num_workers=0, val_fraction=0.5, calibration_pairs=20,
                            val_max_images=12, tensorboard=False, name="tuned"))
    tuned, before = load_checkpoint(out), load_checkpoint(start)
    assert tuned.spec.arch == "dlib_resnet" and tuned.spec.face_align == "lfw-fixed"
    assert tuned.spec.metric == "cosine" and tuned.spec.name == "tuned"
    assert tuned.spec.threshold is not None  # calibrated anew
    moved = [k for k in before.state_dict
             if not torch.equal(before.state_dict[k], tuned.state_dict[k])]
    assert "fc.weight" in moved and len(moved) > 10
