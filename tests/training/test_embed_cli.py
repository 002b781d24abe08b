import numpy as np
import pytest

from imgsim.cli import main
from training.models.embedder import Embedder


def test_embed_writes_one_normalised_row_per_line_in_order(tmp_path, digits_dir, tiny_checkpoint):
    paths = sorted(digits_dir.glob("*/*.png"))[::37][:6]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in reversed(paths)) + "\n")
    out = tmp_path / "out.npy"
    assert main(["embed", "--checkpoint", str(tiny_checkpoint), "--list", str(listing),
                 "--output", str(out), "--num-workers", "0"]) == 0
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (6, 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    expected = Embedder.from_checkpoint(tiny_checkpoint).embed_paths(list(reversed(paths)))
    np.testing.assert_allclose(got, expected, atol=1e-5)  # same order as the list


def test_embed_rows_have_norm_1_for_a_metric_euclidean_model_too(tmp_path, digits_dir,
                                                                 tiny_checkpoint):
    """issue 16: one L2-normalised row per line for every checkpoint; a raw-output model's
    Embedder (its Verify threshold is in raw units) still gives raw rows."""
    from dataclasses import replace

    from training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    raw = save_checkpoint(tmp_path / "raw.pt",
                          replace(ckpt, spec=replace(ckpt.spec, metric="euclidean")))
    paths = sorted(digits_dir.glob("*/*.png"))[::53][:4]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    out = tmp_path / "out.npy"
    assert main(["embed", "--checkpoint", str(raw), "--list", str(listing),
                 "--output", str(out), "--num-workers", "0"]) == 0
    got = np.load(out)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    direct = Embedder.from_checkpoint(raw).embed_paths(paths)
    assert not np.allclose(np.linalg.norm(direct, axis=1), 1, atol=1e-3)
    np.testing.assert_allclose(got, direct / np.linalg.norm(direct, axis=1, keepdims=True),
                               atol=1e-5)


def test_embed_missing_file_is_a_clear_error(tmp_path, tiny_checkpoint, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("/nope/missing.png\n")
    code = main(["embed", "--checkpoint", str(tiny_checkpoint), "--list", str(listing),
                 "--output", str(tmp_path / "o.npy")])
    assert code == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_training_learns_something(digits_dir, tiny_checkpoint):
    """Nearest-neighbour accuracy on the digits is far above chance (10%) after a few steps."""
    paths = sorted(digits_dir.glob("*/*.png"))
    labels = np.array([p.parent.name for p in paths])
    v = Embedder.from_checkpoint(tiny_checkpoint).embed_paths(paths)
    d = ((v[:, None] - v[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() > 0.5
