"""ModelSpec: everything needed to rebuild and feed a model, stored inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METRICS = ("cosine", "euclidean")
# What the face step does without a face: "fallback" embeds the image anyway (whole, or the
# fixed chip for the aligners), "require" refuses it (training.face.FaceNotFoundError).
FACE_ON_MISS = ("fallback", "require")
# The face steps (training.face.FACE_ALIGNERS) that detect a face, and so can miss one.
DETECTING_FACE_STEPS = frozenset({"dlib5", "haar5", "mtcnn5", "haar-crop"})


@dataclass(frozen=True)
class ModelSpec:
    """Architecture + preprocessing + metric of an embedding model.

    Preprocessing travels with the weights (like torchvision's ``Weights.transforms``):
    an image is converted to ``in_channels`` channels, its shorter side resized to
    ``resize_size`` and centre-cropped to ``input_size``, then normalised with
    ``(x - mean) / std`` where x is in [0, 1].
    """

    arch: str
    embedding_dim: int
    input_size: int
    resize_size: int | None = None
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    metric: str = "cosine"  # cosine: outputs are L2-normalised; euclidean: raw outputs
    threshold: float | None = None  # calibrated distance threshold for "same"
    name: str = "model"
    # Face preprocessing applied to the decoded image before resizing (a name in
    # training.face.FACE_ALIGNERS, e.g. "dlib5", "lfw-fixed" or "haar-crop"); None: none.
    # Indexing and every query get it alike, since it is part of the one eval transform.
    face_align: str | None = None
    face_on_miss: str = "fallback"  # one of FACE_ON_MISS; checkpoints before it: fallback
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.face_on_miss not in FACE_ON_MISS:
            raise ValueError(f"face_on_miss must be one of {FACE_ON_MISS}, got "
                             f"{self.face_on_miss!r}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError("mean and std need one value per input channel")
        if self.embedding_dim <= 0 or self.input_size <= 0:
            raise ValueError("embedding_dim and input_size must be positive")

    @property
    def normalize(self) -> bool:
        return self.metric == "cosine"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelSpec fields {sorted(unknown)}")
        d = dict(d)
        d["mean"] = tuple(d.get("mean", IMAGENET_MEAN))
        d["std"] = tuple(d.get("std", IMAGENET_STD))
        return cls(**d)

    def with_threshold(self, threshold: float) -> ModelSpec:
        return replace(self, threshold=float(threshold))

    @property
    def requires_face(self) -> bool:
        """Images without a detected face are refused (a detecting face step with "require")."""
        return self.face_align in DETECTING_FACE_STEPS and self.face_on_miss == "require"

    def face_step(self) -> str:
        """The face step in words: "off", or e.g. "haar-crop (no face: require)"."""
        return f"{self.face_align} (no face: {self.face_on_miss})" if self.face_align else "off"
