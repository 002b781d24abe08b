"""Image preprocessing derived from a ModelSpec: the one eval transform, and training augmentation."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from training.data.limits import MAX_PIXELS
from training.models.spec import ModelSpec


class ImageDecodeError(ValueError):
    """The bytes are not an image we can decode (or exceed the pixel limit)."""


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode encoded image bytes (JPEG, PNG, ...) into a loaded PIL image."""
    if not data:
        raise ImageDecodeError("empty image data")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > max_pixels:
            raise ImageDecodeError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels}")
        img.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as e:
        raise ImageDecodeError("cannot decode image: not a supported image format "
                               f"({len(data)} bytes; expected JPEG, PNG, WebP, ...)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"cannot decode image: {e}") from e
    except Image.DecompressionBombError as e:  # pragma: no cover - caught by our own check first
        raise ImageDecodeError(str(e)) from e
    return img


def _mode(spec: ModelSpec) -> str:
    return "L" if spec.in_channels == 1 else "RGB"


class ToMode:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)


class ReducedDecode:
    """Decode a JPEG file at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, ``Image.draft``)
    when it is at least twice as large as the shorter side ``shorter`` that the transform
    resizes it to next: an antialiased reduction on the way in, several times cheaper than
    decoding every pixel and then resizing. Anything else (other formats, decoded images,
    smaller reductions) passes through untouched."""

    def __init__(self, shorter: int) -> None:
        self.shorter = shorter

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.format == "JPEG" and getattr(img, "tile", None):  # not decoded yet
            w, h = img.size
            s = min(w, h)
            if s >= 2 * self.shorter:
                img.draft(None, (math.ceil(w * self.shorter / s), math.ceil(h * self.shorter / s)))
        return img


def _face_ops(spec: ModelSpec, *, training: bool = False) -> list:
    """The spec's face-preprocessing step (detection + alignment into a chip, or the Haar
    crop), if it names one. It raises FaceNotFoundError on a miss when the spec says
    ``face_on_miss = "require"``, except in training (an epoch cannot skip an image: the
    fallback is used there)."""
    if not spec.face_align:
        return []
    from training.face import get_face_aligner

    return [get_face_aligner(spec.face_align, size=spec.input_size,
                             on_miss="fallback" if training else spec.face_on_miss)]


def _eval_image_ops(spec: ModelSpec) -> list:
    """The eval preprocessing up to the final crop: PIL image -> PIL image of input_size."""
    resize = spec.resize_size or spec.input_size
    face = _face_ops(spec)  # alignment needs the full-resolution image
    return [
        *([] if face else [ReducedDecode(resize)]),
        ToMode(_mode(spec)),
        *face,
        T.Resize(resize, antialias=True),
        T.CenterCrop(spec.input_size),
    ]


def eval_transform(spec: ModelSpec) -> T.Compose:
    """PIL image -> (C, input_size, input_size) float32 tensor, as the model expects:
    :func:`eval_pixels_transform`, then :class:`NormalizePixels`."""
    return T.Compose([*_eval_image_ops(spec), ToPixels(), NormalizePixels(spec)])


class ToPixels:
    """PIL image -> (C, H, W) uint8 tensor: the raw pixels, a quarter of float32's bytes."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        a = torch.from_numpy(np.array(img, np.uint8, copy=True))
        return (a[None] if a.ndim == 2 else a.permute(2, 0, 1)).contiguous()


def eval_pixels_transform(spec: ModelSpec) -> T.Compose:
    """:func:`eval_transform` without its last step: the uint8 pixels that
    :func:`normalize_pixels` turns into the model's input, a whole batch at a time. Bulk
    embedding uses this pair: DataLoader workers send a quarter of the bytes, and the scaling
    runs vectorised over the batch instead of per image (the same arithmetic, the same bits)."""
    return T.Compose([*_eval_image_ops(spec), ToPixels()])


def normalize_pixels(pixels: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(C, H, W) or (n, C, H, W) uint8 -> float32 model input: torchvision's ToTensor (/255)
    then Normalize ((x - mean) / std), the same operations in the same order."""
    mean = torch.as_tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    return pixels.to(torch.float32).div(255).sub_(mean).div_(std)


class NormalizePixels:
    """:func:`normalize_pixels` as a transform step."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalize_pixels(pixels, self.spec)


def train_transform(spec: ModelSpec, *, flip: bool = True, color_jitter: float = 0.2,
                    scale: tuple[float, float] = (0.6, 1.0)) -> T.Compose:
    """Augmentation for metric learning: random resized crop, flip, colour jitter."""
    ops: list = [ToMode(_mode(spec)), *_face_ops(spec, training=True),
                 T.RandomResizedCrop(spec.input_size, scale=scale, antialias=True)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    if color_jitter > 0 and spec.in_channels == 3:
        ops.append(T.ColorJitter(color_jitter, color_jitter, color_jitter))
    ops += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(ops)


def to_batch(images: list[Image.Image], spec: ModelSpec) -> torch.Tensor:
    tf = eval_transform(spec)
    return torch.stack([tf(im) for im in images])


def face_transform(spec: ModelSpec, *, color_jitter: float = 0.2) -> T.Compose:
    """Augmentation for aligned faces: small scale and aspect jitter around the eval crop
    (resize to ``resize_size``, then a crop of about ``input_size``), flip, colour jitter.
    Big random crops would train on background the eval crop never shows."""
    resize = spec.resize_size or spec.input_size
    context = min(resize, int(round(spec.input_size * 1.15)))
    face = _face_ops(spec, training=True)
    ops: list = [*([] if face else [ReducedDecode(resize)]), ToMode(_mode(spec)), *face,
                 T.Resize(resize, antialias=True),
                 T.CenterCrop(context),
                 T.RandomResizedCrop(spec.input_size, scale=(0.7, 1.0), ratio=(0.9, 1.1),
                                     antialias=True),
                 T.RandomHorizontalFlip()]
    if color_jitter > 0 and spec.in_channels == 3:
        ops.append(T.ColorJitter(color_jitter, color_jitter, color_jitter))
    ops += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(ops)


# Training augmentation by name: "crop" for objects (birds, products), "face" for aligned
# faces, "none" for the eval transform itself.
AUGMENTATIONS = {
    "crop": lambda spec: train_transform(spec, scale=(0.3, 1.0)),
    "face": face_transform,
    "none": eval_transform,
}


def get_augmentation(name: str, spec: ModelSpec) -> T.Compose:
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(sorted(AUGMENTATIONS))}")
    return AUGMENTATIONS[name](spec)
