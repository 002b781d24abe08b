"""The face path's stages in the Prometheus metrics: an image through a face model's
preprocessing and forward pass moves detect/align/embed, a face-less one the misses."""

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from prometheus_client import generate_latest

from service.images import ImagePipeline
from service.metrics import Metrics
from tests.conftest import shared_data
from training.checkpoint import load_checkpoint, save_checkpoint
from training.models.embedder import Embedder


def scrape(metrics: Metrics) -> dict[str, float]:
    out = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("imgsim_face_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.data
def test_face_stages_and_misses_move(tiny_checkpoint, tmp_path):
    root = shared_data("lfw") / "lfw-deepfunneled"
    photo = sorted(root.glob("*/*.jpg"))[0].read_bytes()
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.spec = replace(ckpt.spec, face_align="mtcnn5", face_on_miss="fallback")
    path = save_checkpoint(tmp_path / "mtcnn5.pt", ckpt)
    metrics = Metrics()
    before = scrape(metrics)
    pipeline = ImagePipeline(Embedder.from_checkpoint(path))
    try:
        rows = pipeline.embed([photo, _png(Image.new("RGB", (120, 120), (90, 90, 90)))])
    finally:
        pipeline.close()
    assert np.isfinite(rows).all()
    after = scrape(metrics)

    def moved(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert moved('imgsim_face_stage_images_total{stage="detect"}') == 2
    assert moved('imgsim_face_stage_images_total{stage="align"}') == 1  # the blank has no face
    assert moved('imgsim_face_stage_images_total{stage="embed"}') == 2
    assert moved('imgsim_face_stage_seconds_total{stage="detect"}') > 0
    assert moved('imgsim_face_misses_total{outcome="fallback"}') == 1
    assert moved('imgsim_face_misses_total{outcome="refused"}') == 0
