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


@pytest.mark.data
def test_concurrent_requests_share_one_face_step_and_get_the_per_image_pixels(
        tiny_checkpoint, tmp_path):
    """The service runs MTCNN and the landmarks once per batch of images from concurrent
    requests; each image gets exactly the pixels of the image-by-image transform that built
    the index, and its own face outcome."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from training.data.transforms import decode_image
    from training.face.stages import FACE_STAGES

    root = shared_data("lfw") / "lfw-deepfunneled"
    photos = [p.read_bytes() for p in sorted(root.glob("*/*.jpg"))[:6]]
    blank = _png(Image.new("RGB", (120, 120), (90, 90, 90)))
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.spec = replace(ckpt.spec, face_align="mtcnn5", face_on_miss="fallback")
    emb = Embedder.from_checkpoint(save_checkpoint(tmp_path / "mtcnn5.pt", ckpt))
    images = [decode_image(d) for d in [*photos, blank]]
    got = emb.face_pixels(images)
    assert [found for _, found in got] == [True] * 6 + [False]
    for im, (px, _) in zip(images, got, strict=True):
        assert torch.equal(px, emb.pixels(im))
    strict = Embedder(emb.model, replace(emb.spec, face_on_miss="require"))
    assert strict.face_pixels([images[-1]]) == [(None, False)]

    sizes: list[int] = []
    pipeline = ImagePipeline(emb, max_wait_ms=200,
                             observer=lambda name, n, _: sizes.append(n) if name == "face"
                             else None)
    try:
        alone = pipeline.embed(photos)
        sizes.clear()
        detect_calls = FACE_STAGES.snapshot()[0]["detect"].calls
        with ThreadPoolExecutor(len(photos) + 1) as pool:
            answers = list(pool.map(lambda d: pipeline.embed_faces([d]), [*photos, blank]))
        assert FACE_STAGES.snapshot()[0]["detect"].calls - detect_calls == len(sizes) < 7
        assert sum(sizes) == 7 and max(sizes) > 1
    finally:
        pipeline.close()
    assert [a.faces for a in answers] == [[True]] * 6 + [[False]]
    np.testing.assert_allclose(np.concatenate([a.vectors for a in answers[:6]]), alone,
                               atol=1e-5)


def test_pixel_budget_waits_for_room_and_gives_up_at_the_deadline():
    import threading
    import time

    from service.errors import DeadlineExceeded
    from service.images import PixelBudget

    budget = PixelBudget(100)
    budget.take(500, None)  # one image always fits, however large
    with pytest.raises(DeadlineExceeded, match="deadline exceeded waiting to decode"):
        budget.take(10, time.monotonic() + 0.05)
    took = threading.Event()
    t = threading.Thread(target=lambda: (budget.take(60, time.monotonic() + 5), took.set()))
    t.start()
    assert not took.wait(0.1)
    budget.give(500)
    assert took.wait(5)
    t.join()
    assert budget.used == 60
