"""Face preprocessing: detection, 5-landmark alignment into dlib-compatible chips, fixed crops."""

from training.face.aligners import (
    FACE_ALIGNERS,
    FaceNotFoundError,
    FixedAligner,
    LandmarkAligner,
    get_face_aligner,
)
from training.face.chips import chip_to_image_affine, extract_chip, face_chip, similarity_transform

__all__ = ["FACE_ALIGNERS", "FaceNotFoundError", "FixedAligner", "LandmarkAligner",
           "chip_to_image_affine", "extract_chip", "face_chip", "get_face_aligner",
           "similarity_transform"]
