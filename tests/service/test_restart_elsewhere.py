"""Uploaded images are found again by a server, `blobs gc` or `reindex` started from another
working directory, with --index-root relative to it: blob rows are kept relative to the root."""

import hashlib
import os

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

import indexer.reindex as rx
from imgsim.cli import main
from indexer.catalog import ImageRow, open_catalog, upsert_images
from indexer.versions import load_index_version
from service.core import ImageInput, SimilarityCore, UpsertItem
from service.store import BlobStore
from tests.service.conftest import digit, encoded
from training.models.embedder import Embedder


def fresh_image(digits_dir) -> bytes:
    """A digit no catalogued image holds: one of them, mirrored."""
    with Image.open(digit(digits_dir, "8", 7)) as img:
        return encoded(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG")


def open_core(root: str, url: str, checkpoint) -> SimilarityCore:
    return SimilarityCore(Embedder.from_checkpoint(checkpoint), load_index_version(root),
                          open_catalog(url))


def test_uploads_survive_a_restart_from_another_directory(workspace, tiny_checkpoint,
                                                          digits_dir, tmp_path, monkeypatch):
    data = fresh_image(digits_dir)
    monkeypatch.chdir(workspace)  # `imgsim serve --index-root idx --catalog sqlite:///cat.db`
    core = open_core("idx", "sqlite:///cat.db", tiny_checkpoint)
    core.upsert([UpsertItem("up/1", data, label="8")])
    blob = (BlobStore(core.blob_dir(core.live())).path_for(hashlib.sha256(data).hexdigest(),
                                                           "png")).resolve()
    core.close()

    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # the same root, named from another directory
    root, url = os.path.relpath(workspace / "idx"), f"sqlite:///{os.path.relpath(workspace / 'cat.db')}"
    old = blob.stat().st_mtime - 3600
    os.utime(blob, (old, old))
    assert main(["blobs", "gc", "--index-root", root, "--catalog", url]) == 0
    assert blob.is_file()  # it used to be swept: its row named it from the first directory
    with open_catalog(url)() as s:
        row = s.execute(select(ImageRow.path, ImageRow.storage)
                        .where(ImageRow.key == "up/1")).one()
    assert tuple(row) == (f"blobs/{blob.parent.name}/{blob.name}", "blob")
    path = rx.reindex(rx.ReindexConfig(checkpoint=str(tiny_checkpoint), catalog_url=url,
                                       index_root=root, factory="Flat", chunk_size=128,
                                       num_workers=0, progress=False, tuning_queries=100))
    core = open_core(root, url, tiny_checkpoint)  # reindex read the upload from its blob
    try:
        assert core.index.manifest.version == path.name
        hit = core.search(ImageInput(data=data), 1).hits[0]
        assert (hit.key, hit.label) == ("up/1", "8") and hit.distance == pytest.approx(0, abs=1e-3)
        core.delete(["up/1"])
        assert not blob.exists()  # its last reference went: the file is found and removed
    finally:
        core.close()


def test_an_upload_recorded_the_old_way_is_still_read(workspace, tiny_checkpoint, digits_dir,
                                                      tmp_path, monkeypatch):
    """Rows written before blob paths were relative to the root hold a path relative to the
    old server's working directory: the content is found in the collection's blob store."""
    data = digit(digits_dir, "6", 9).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    store = BlobStore(workspace / "idx" / "blobs")
    blob, _, _ = store.put(data, ext="png")
    old = blob.stat().st_mtime - 3600
    os.utime(blob, (old, old))
    with open_catalog(f"sqlite:///{workspace / 'cat.db'}").begin() as s:
        upsert_images(s, [{"key": "old/1", "label": "6", "sha256": sha,  # never indexed
                           "path": f"idx/blobs/{sha[:2]}/{sha}.png"}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = f"sqlite:///{workspace / 'cat.db'}"
    assert main(["blobs", "gc", "--index-root", str(workspace / "idx"), "--catalog", url]) == 0
    assert blob.is_file()  # its row cannot be resolved from here, but it is a reference
    core = open_core(str(workspace / "idx"), url, tiny_checkpoint)
    try:
        by_key = core.vector(ImageInput(key="old/1"))
        np.testing.assert_allclose(by_key, core.vector(ImageInput(data=data)), atol=1e-5)
    finally:
        core.close()
