"""A small CNN classifier of real handwritten digits (scikit-learn's, offline on any machine),
trained in seconds, for the classifier demos (class-score occlusion, class ascent, filters).

It is saved as an ordinary imgsim checkpoint whose "embedding" is the 10 class logits
(metric euclidean, so unnormalised), with config task=classifier and the class names."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.checkpoint import Checkpoint, save_checkpoint
from training.data.transforms import eval_transform
from training.models.backbones import build_model
from training.models.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierConfig:
    out: str
    epochs: int = 4
    width: int = 8
    input_size: int = 32
    batch_size: int = 64
    lr: float = 3e-3
    test_fraction: float = 0.2
    seed: int = 0


def digit_images(size: int = 32) -> tuple[list[Image.Image], np.ndarray]:
    """sklearn's 1,797 digits as upscaled grey PIL images (white on black) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [Image.fromarray((img / 16.0 * 255).astype(np.uint8), "L")
              .resize((size, size), Image.BILINEAR) for img in d.images]
    return images, d.target.astype(np.int64)


def train_digit_classifier(cfg: ClassifierConfig, *, progress=None) -> Path:
    """Train, report held-out accuracy in the checkpoint's metrics, write <out>/classifier.pt."""
    torch.manual_seed(cfg.seed)
    spec = ModelSpec(arch="smallcnn", embedding_dim=10, input_size=cfg.input_size, in_channels=1,
                     mean=(0.25,), std=(0.35,), metric="euclidean", name="digits-classifier",
                     arch_kwargs={"width": cfg.width})
    images, labels = digit_images(cfg.input_size)
    tf = eval_transform(spec)
    x = torch.stack([tf(im) for im in images])
    y = torch.from_numpy(labels)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))
    n_test = int(len(y) * cfg.test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * ((len(train) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        order = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), cfg.batch_size):
            b = order[i:i + cfg.batch_size]
            xb = x[b]
            # light augmentation: shifts of up to 2 pixels
            dy, dx = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, (dy, dx), (2, 3))
            loss = F.cross_entropy(model(xb), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if progress:
            progress((epoch + 1) / cfg.epochs, f"epoch {epoch + 1}: loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        acc = float((model(x[test]).argmax(1) == y[test]).float().mean())
    log.info("digit classifier: held-out accuracy %.3f", acc)
    ckpt = Checkpoint(spec, model.state_dict(),
                      config={**asdict(cfg), "task": "classifier",
                              "classes": [str(i) for i in range(10)]},
                      metrics={"test_accuracy": acc, "test_images": n_test})
    return save_checkpoint(Path(cfg.out) / "classifier.pt", ckpt)
