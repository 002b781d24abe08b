"""Import dlib's face recognition ResNet (.dat) as an imgsim checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from training.checkpoint import Checkpoint, file_sha256
from training.dlib.model import dlib_spec, state_dict_from_dlib
from training.dlib.network import read_network
from training.dlib.paths import models_dir
from training.dlib.threshold import DLIB_UNIT_THRESHOLD

log = logging.getLogger(__name__)

FACE_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def find_face_model(path: str | Path | None = None) -> Path:
    """``path`` if given, else the file shipped by the installed face_recognition_models."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"dlib model file not found: {p}")
        return p
    mdir = models_dir()
    if mdir is None or not (mdir / FACE_MODEL_FILE).is_file():
        raise FileNotFoundError(f"{FACE_MODEL_FILE} not found: pass --dat PATH or install "
                                "face_recognition_models (pip install 'imgsim[face]')")
    return mdir / FACE_MODEL_FILE


def import_face_resnet(dat: str | Path | None = None, *, name: str = "dlib_face_resnet_v1",
                       threshold: float = DLIB_UNIT_THRESHOLD, face_align: str | None = "mtcnn5") -> Checkpoint:
    """Read the .dat, fold its affine layers into the convs and wrap it as a Checkpoint
    (L2-normalised descriptors; ``threshold`` between unit vectors)."""
    path = find_face_model(dat)
    net = read_network(path)
    state = state_dict_from_dlib(net)
    spec = dlib_spec(net, name=name, threshold=threshold, face_align=face_align)
    log.info("imported %s: %d layers, input means %s", path.name, len(net.layers),
             [round(m, 3) for m in net.input_mean])
    config = {"source": path.name, "source_sha256": file_sha256(path),
              "licence": "CC0 (the .dat, per face_recognition_models' LICENSE); trained on "
                         "VGG Face and FaceScrub, whose terms are research-only",
              "dlib_loss": net.loss, **{f"dlib_{k}": v for k, v in net.loss_params.items()}}
    return Checkpoint(spec, state, config=config)
