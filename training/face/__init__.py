"""Face preprocessing: detection, 5-landmark alignment into dlib-compatible chips, fixed crops,
the Haar face crop."""

from training.face.aligners import (
    FACE_ALIGNERS,
    FaceNotFoundError,
    FixedAligner,
    LandmarkAligner,
    get_face_aligner,
)
from training.face.chips import chip_to_image_affine, extract_chip, face_chip, similarity_transform
from training.face.haar import ON_MISS, HaarCrop, crop_main_face, detect_faces

__all__ = ["FACE_ALIGNERS", "ON_MISS", "FaceNotFoundError", "FixedAligner", "HaarCrop",
           "LandmarkAligner", "chip_to_image_affine", "crop_main_face", "detect_faces",
           "extract_chip", "face_chip", "get_face_aligner", "similarity_transform"]
