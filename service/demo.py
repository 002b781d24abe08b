"""The demo that `make run` serves: real offline images, a small model trained here, an index.

Default data: scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside the package,
so any fresh machine has them). ``IMGSIM_DEMO_DATA=PATH`` points at any image folder instead
(``PATH/<label>/<image>``, e.g. LFW). A few images per class are held out as queries the model
and the index never saw, written as ``<root>/queries/<label>__<n>.<ext>`` (n = 1, 2, ...): the
names the README's example commands use, whichever images the hold-out drew.

Training is short on purpose: on the digits, the held-out classes' MAP@R peaks after about
20-30 steps and then falls (0.84 after 20 steps, 0.60 after 160, see git log), so the demo
trains 2 epochs of 15 steps and keeps the better epoch by validation MAP@R.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.build import BuildConfig, build_index
from service.writable import not_writable_message, require_writable
from training.data.folders import Sample, list_image_folder
from training.engine.train import TrainConfig, train

log = logging.getLogger(__name__)

DEMO_FORMAT = 2  # demo.json layout and query names; another value rebuilds the demo


@dataclass(frozen=True)
class Demo:
    root: Path
    checkpoint: Path
    index_root: Path
    catalog_url: str
    queries: list[Path]
    data: str
    query_sources: tuple[str, ...] = ()  # catalogue key each query was drawn from (label/name)


def query_name(label: str, n: int, suffix: str) -> str:
    """File name of the n-th (1-based) held-out query of ``label``: ``3__1.png``."""
    return f"{label}__{n}{suffix.lower()}"


def query_label(path: str | Path) -> str:
    """The label a query file name carries (:func:`query_name`'s inverse)."""
    return Path(path).name.rsplit("__", 1)[0]


def export_digits(dest: Path, *, size: int = 32) -> None:
    """Write sklearn's digits as PNGs under dest/<digit>/NNNN.png (upscaled, white on black)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.target, strict=True)):
        out = dest / str(label)
        out.mkdir(parents=True, exist_ok=True)
        arr = (img / 16.0 * 255).astype(np.uint8)
        Image.fromarray(arr, "L").resize((size, size), Image.BILINEAR).save(out / f"{i:04d}.png")


def _hold_out(samples: list[Sample], *, per_class: int, max_classes: int, seed: int = 0):
    by: dict[str, list[Sample]] = {}
    for s in samples:
        by.setdefault(s.label, []).append(s)
    rng = np.random.default_rng(seed)
    eligible = sorted(c for c, v in by.items() if len(v) >= per_class + 2)
    chosen = set(rng.choice(eligible, size=min(max_classes, len(eligible)), replace=False))
    queries = []
    for c in sorted(chosen):
        queries += [by[c][i] for i in rng.choice(len(by[c]), per_class, replace=False)]
    qset = {q.path for q in queries}
    return [s for s in samples if s.path not in qset], queries


def prepare_demo(root: str | Path = "var/demo", *, data: str | None = None,
                 epochs: int | None = None) -> Demo:
    """Build (once) the demo model and index under ``root``; later calls reuse them. A root
    that cannot be written raises PermissionError naming the folder and the fix."""
    root = Path(root)
    done = root / "demo.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("data") == (data or "sklearn-digits") and info.get("format") == DEMO_FORMAT:
            return _demo_from(root, info)
        log.info("demo data or layout changed: rebuilding %s", root)
    what = "the demo writes its model, index and catalogue there"
    require_writable(root, what=what)
    try:
        return _build(root, data=data, epochs=epochs)
    except PermissionError as e:  # a sub-folder owned by someone else, a read-only mount
        folder = Path(e.filename).parent if e.filename else root
        raise PermissionError(not_writable_message(folder, what=what)) from e


def _build(root: Path, *, data: str | None, epochs: int | None) -> Demo:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    done = root / "demo.json"
    if data is None:
        src = root / "digits"
        export_digits(src)
        # contrastive (margin 0.5) gives distances on a readable scale; batch-hard triplet at
        # this learning rate collapsed the embedding on the digits (measured, see git log).
        # Held-out MAP@R peaks after 20-30 steps: 2 x 15 steps, the better epoch kept.
        tcfg = dict(arch="smallcnn", input_size=32, embedding_dim=64, p=10, k=8, loss="contrastive",
                    margin=0.5, steps_per_epoch=15, epochs=epochs or 2, num_workers=0,
                    val_fraction=0.2, val_metric="map@r", tensorboard=False)
        per_class, max_classes = 3, 10
    else:
        src = Path(data)
        tcfg = dict(arch="smallcnn", input_size=64, embedding_dim=128, p=16, k=4,
                    steps_per_epoch=60, epochs=epochs or 4, num_workers=2, val_fraction=0.1,
                    val_metric="map@r", tensorboard=False)
        per_class, max_classes = 1, 20
    samples = list_image_folder(src)
    rest, queries = _hold_out(samples, per_class=per_class, max_classes=max_classes)
    qpaths = write_queries(root / "queries", queries)
    log.info("training the demo model on %d images (%d held out as queries)", len(rest), len(queries))
    ckpt = train(TrainConfig(data=str(src), out=str(root / "model"), name="demo", **tcfg),
                 samples=rest)
    catalog_url = f"sqlite:///{(root / 'catalog.db').resolve()}"
    build_index(BuildConfig(checkpoint=str(ckpt), images=str(src), index_root=str(root / "index"),
                            catalog_url=catalog_url, num_workers=tcfg["num_workers"]),
                samples=rest)
    info = {"format": DEMO_FORMAT, "data": data or "sklearn-digits",
            "checkpoint": str(ckpt.resolve()),
            "index_root": str((root / "index").resolve()), "catalog_url": catalog_url,
            "queries": [str(p.resolve()) for p in qpaths],
            "query_sources": [f"{q.label}/{Path(q.path).stem}" for q in queries]}
    done.write_text(json.dumps(info, indent=2))
    return _demo_from(root, info)


def write_queries(qdir: Path, queries: list[Sample]) -> list[Path]:
    """Copy the held-out images to ``qdir`` under their stable names (:func:`query_name`)."""
    qdir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    paths = []
    for q in queries:
        seen[q.label] = seen.get(q.label, 0) + 1
        dst = qdir / query_name(q.label, seen[q.label], Path(q.path).suffix)
        shutil.copyfile(q.path, dst)
        paths.append(dst)
    return paths


def _demo_from(root: Path, info: dict) -> Demo:
    return Demo(root, Path(info["checkpoint"]), Path(info["index_root"]), info["catalog_url"],
                [Path(q) for q in info["queries"]], info["data"],
                tuple(info.get("query_sources", ())))
