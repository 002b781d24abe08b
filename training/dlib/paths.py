"""Where dlib's model files are: the installed face_recognition_models package, found without importing it."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def models_dir() -> Path | None:
    """``face_recognition_models/models`` of the installed package, or None. Located without
    importing the package: its __init__ needs pkg_resources, which new setuptools lacks."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"
