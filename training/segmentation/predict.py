"""Predicting and scoring with a trained segmenter: files in, masks/overlays/scores out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from training.checkpoint import load_seg_checkpoint
from training.segmentation.data import load_image, load_isbi, parse_slices
from training.segmentation.infer import predict_probs
from training.segmentation.metrics import mean_scores, score_membranes
from training.segmentation.outputs import save_mask, save_overlay, save_probability

Progress = Callable[[float, str], None]


def predict_files(checkpoint: str | Path, images: list[str | Path], out_dir: str | Path, *,
                  threshold: float = 0.5, tile: int = 256, margin: int = 32, tta: bool = False,
                  progress: Progress | None = None) -> list[dict]:
    """For each image write <stem>_mask.png, <stem>_prob.png, <stem>_overlay.png into out_dir."""
    if not images:
        raise ValueError("no images to segment")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) not found, first: {missing[0]}")
    ckpt = load_seg_checkpoint(checkpoint)
    model = ckpt.build()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, path in enumerate(images):
        path = Path(path)
        image = load_image(path)
        prob = predict_probs(model, image, tile=tile, margin=margin, mean=ckpt.mean,
                             std=ckpt.std, tta=tta)[1]
        membrane = prob >= threshold
        rows.append({"name": path.name,
                     "mask": str(save_mask(out / f"{path.stem}_mask.png", membrane)),
                     "probability": str(save_probability(out / f"{path.stem}_prob.png", prob)),
                     "overlay": str(save_overlay(out / f"{path.stem}_overlay.png", image,
                                                 membrane))})
        if progress:
            progress((i + 1) / len(images), f"segmented {i + 1}/{len(images)}")
    return rows


def evaluate_slices(checkpoint: str | Path, data: str | Path, slices: str, out_dir: str | Path,
                    *, threshold: float = 0.5, tile: int = 256, margin: int = 32,
                    tta: bool = False, grow_cells: bool = False,
                    progress: Progress | None = None) -> tuple[dict, list[dict]]:
    """Score labelled ISBI slices; writes an overlay per slice. -> (mean scores, per-slice rows)
    ``grow_cells``: the Rand error of the predicted cells grown over the predicted membrane
    (:func:`training.segmentation.metrics.grow_cells`)."""
    ckpt = load_seg_checkpoint(checkpoint)
    model = ckpt.build()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labelled = load_isbi(data, parse_slices(slices))
    rows, scores = [], []
    for i, s in enumerate(labelled):
        prob = predict_probs(model, s.image, tile=tile, margin=margin, mean=ckpt.mean,
                             std=ckpt.std, tta=tta)[1]
        sc = score_membranes(prob, s.mask, threshold=threshold, grow=grow_cells)
        scores.append(sc)
        ov = save_overlay(out / f"slice{s.name}_overlay.png", s.image, prob >= threshold,
                          true_membrane=s.mask.astype(bool))
        rows.append({"slice": s.name, **sc.to_dict(), "overlay": str(ov)})
        if progress:
            progress((i + 1) / len(labelled), f"scored slice {s.name}")
    return mean_scores(scores).to_dict(), rows
