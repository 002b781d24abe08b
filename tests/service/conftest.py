"""Service fixtures: one index of the digits built once, copied per test that changes it."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from indexer.build import BuildConfig, build_index
from indexer.catalog import open_catalog
from indexer.versions import load_index_version
from service.core import CoreOptions, SimilarityCore
from training.models.embedder import Embedder


@pytest.fixture(scope="session")
def golden(tmp_path_factory, digits_dir, tiny_checkpoint) -> Path:
    """<dir>/idx (index root) and <dir>/cat.db: the 400 digits, collection 'default'."""
    root = tmp_path_factory.mktemp("golden")
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                            index_root=str(root / "idx"), catalog_url=f"sqlite:///{root / 'cat.db'}",
                            num_workers=0, progress=False))
    return root


@pytest.fixture()
def workspace(golden, tmp_path) -> Path:
    """A private copy of the golden index and catalogue."""
    ws = tmp_path / "ws"
    shutil.copytree(golden, ws)
    return ws


def make_core(ws: Path, checkpoint: Path, **options) -> SimilarityCore:
    return SimilarityCore(Embedder.from_checkpoint(checkpoint), load_index_version(ws / "idx"),
                          open_catalog(f"sqlite:///{ws / 'cat.db'}"),
                          options=CoreOptions(**options))


def digit(digits_dir: Path, label: str, i: int = 0) -> Path:
    return sorted((digits_dir / label).iterdir())[i]


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()
