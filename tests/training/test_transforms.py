import numpy as np
import pytest
import torch
from PIL import Image

from training.data.transforms import (
    ReducedDecode,
    eval_pixels_transform,
    eval_transform,
    normalize_pixels,
)
from training.models.spec import ModelSpec


def _photo(size=(300, 240)) -> Image.Image:
    """A smooth synthetic photo: gradients and a disc, no high frequencies to alias."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = ((x - w / 2) ** 2 + (y - h / 2) ** 2 < (h / 3) ** 2) * 120
    rgb = np.stack([x / w * 255, y / h * 255, 60 + disc], -1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def _file(img: Image.Image, fmt: str, tmp_path) -> str:
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, fmt, quality=95)
    return str(path)


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path):
    path = _file(_photo((300, 240)), "JPEG", tmp_path)
    with Image.open(path) as img:  # shorter side 240 >= 2 x 100: libjpeg decodes at 1/2
        assert ReducedDecode(100)(img).load() is not None and img.size == (150, 120)
    with Image.open(path) as img:  # 240 >= 4 x 60 -> 1/4, still at least 60 on the short side
        ReducedDecode(60)(img).load()
        assert img.size == (75, 60)
    with Image.open(path) as img:  # less than a 2x reduction: every pixel
        ReducedDecode(130)(img).load()
        assert img.size == (300, 240)


def test_other_formats_and_decoded_images_pass_through(tmp_path):
    with Image.open(_file(_photo(), "PNG", tmp_path)) as img:
        ReducedDecode(50)(img).load()
        assert img.size == (300, 240)
    decoded = _photo()
    assert ReducedDecode(50)(decoded) is decoded and decoded.size == (300, 240)


@pytest.mark.parametrize("size", [(300, 240), (500, 375)])
def test_eval_transform_output_barely_changes(tmp_path, size):
    """The reduced decode is an antialiased reduction: the model's input matches the one from
    decoding every pixel, to a fraction of a grey level on average."""
    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=64, resize_size=73)
    path = _file(_photo(size), "JPEG", tmp_path)
    with Image.open(path) as img:
        fast = eval_transform(spec)(img)
    with Image.open(path) as img:
        img.load()  # decoded in full: ReducedDecode leaves it alone
        full = eval_transform(spec)(img)
    assert fast.shape == full.shape == (3, 64, 64)
    grey = torch.tensor(spec.std).view(3, 1, 1) * 255  # one grey level in normalised units
    assert ((fast - full).abs() * grey).mean() < 1.0


def test_no_reduction_before_face_alignment():
    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=64, face_align="lfw-fixed")
    assert not any(isinstance(op, ReducedDecode) for op in eval_transform(spec).transforms)


@pytest.mark.parametrize("channels", [3, 1])
def test_uint8_pixels_normalised_as_a_batch_are_torchvisions_transform_bit_for_bit(tmp_path,
                                                                                    channels):
    """Bulk embedding ships uint8 pixels from the DataLoader workers and normalises whole
    batches; eval_transform normalises one image the same way. Both must give exactly what
    torchvision's ToTensor + Normalize give on the same crop, the model's training input."""
    from torchvision import transforms as T

    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=64, resize_size=73,
                     in_channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels) \
        if channels == 1 else ModelSpec(arch="smallcnn", embedding_dim=8, input_size=64,
                                        resize_size=73)
    reference = T.Compose([*eval_pixels_transform(spec).transforms[:-1], T.ToTensor(),
                           T.Normalize(spec.mean, spec.std)])
    paths = []
    for i, size in enumerate([(300, 240), (240, 300), (90, 70)]):
        (tmp_path / str(i)).mkdir()
        paths.append(_file(_photo(size), "JPEG", tmp_path / str(i)))
    expected, singles, pixels = [], [], []
    for p in paths:
        for out, tf in ((expected, reference), (singles, eval_transform(spec)),
                        (pixels, eval_pixels_transform(spec))):
            with Image.open(p) as img:
                out.append(tf(img))
    assert all(px.dtype == torch.uint8 and px.shape == (channels, 64, 64) for px in pixels)
    batch = normalize_pixels(torch.stack(pixels), spec)
    assert batch.dtype == torch.float32
    assert torch.equal(batch, torch.stack(expected))
    assert torch.equal(torch.stack(singles), torch.stack(expected))
