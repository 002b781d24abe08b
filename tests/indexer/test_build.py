import json

import faiss
import numpy as np
import pytest
from sqlalchemy.exc import IntegrityError

from indexer.build import BuildConfig, build_index
from indexer.catalog import ImageRow, all_images, open_catalog, upsert_images
from indexer.versions import current_version_name, load_index_version, publish_lock
from training.models.embedder import Embedder


@pytest.fixture
def built(tmp_path, digits_dir, tiny_checkpoint):
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    path = build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                                   index_root=str(tmp_path / "idx"), catalog_url=url,
                                   num_workers=0, progress=False))
    return tmp_path, url, path


def test_catalogue_rows_and_faiss_ids_agree(built, digits_dir, tiny_checkpoint):
    tmp, url, path = built
    Session = open_catalog(url)
    with Session() as s:
        rows = all_images(s)
    files = sorted(digits_dir.glob("*/*.png"))
    assert len(rows) == len(files)
    row = next(r for r in rows if r.key == "3/" + files[3 * 40].stem or r.label == "3")
    assert row.label == row.key.split("/")[0] and len(row.sha256) == 64
    version = load_index_version(tmp / "idx")
    assert version.manifest.count == len(rows)
    assert isinstance(version.index, faiss.IndexIDMap2)
    # the FAISS id of every vector is its catalogue primary key: reconstruct == embed(file)
    emb = Embedder.from_checkpoint(tiny_checkpoint)
    for r in rows[::50]:
        np.testing.assert_allclose(version.index.reconstruct(r.id), emb.embed_paths([r.path])[0],
                                   atol=1e-5)


def test_manifest_describes_the_version(built, tiny_checkpoint):
    tmp, _, path = built
    m = json.loads((path / "manifest.json").read_text())
    emb = Embedder.from_checkpoint(tiny_checkpoint)
    assert m["checkpoint_sha256"] == emb.checkpoint_sha256
    assert m["dimension"] == 32 and m["factory"] == "Flat" and m["threshold"] == emb.spec.threshold
    assert current_version_name(tmp / "idx") == path.name


def test_rebuild_keeps_ids_and_publishes_a_new_version(built, digits_dir, tiny_checkpoint):
    tmp, url, first = built
    with open_catalog(url)() as s:
        ids_before = {r.key: r.id for r in all_images(s)}
    second = build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                                     index_root=str(tmp / "idx"), catalog_url=url,
                                     num_workers=0, progress=False))
    with open_catalog(url)() as s:
        ids_after = {r.key: r.id for r in all_images(s)}
    assert ids_before == ids_after  # upsert by key, no duplicates
    assert second != first and current_version_name(tmp / "idx") == second.name


def test_key_is_unique_per_collection(tmp_path):
    Session = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    row = {"key": "a", "path": "/x", "label": "l", "sha256": "0" * 64}
    with Session.begin() as s:
        upsert_images(s, [row], collection="c1")
        upsert_images(s, [row], collection="c2")  # same key, other collection: fine
    with pytest.raises(IntegrityError):
        with Session.begin() as s:
            s.add(ImageRow(collection="c1", **row))


def test_build_publishes_only_while_holding_the_roots_publish_lock(built, digits_dir,
                                                                  tiny_checkpoint, monkeypatch):
    """Publishing excludes the root's other writers (reindex, a server's Upsert/Delete)."""
    import concurrent.futures

    import indexer.build

    tmp, url, _ = built
    real, free = indexer.build.publish_version, []

    def others_can_lock(root) -> bool:
        try:
            with publish_lock(root, timeout=0):
                return True
        except TimeoutError:
            return False

    def publish_version(index_root, *a, **kw):
        with concurrent.futures.ThreadPoolExecutor(1) as other:  # another writer's thread
            free.append(other.submit(others_can_lock, index_root).result())
        return real(index_root, *a, **kw)

    monkeypatch.setattr(indexer.build, "publish_version", publish_version)
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                            index_root=str(tmp / "idx"), catalog_url=url, num_workers=0,
                            progress=False))
    assert free == [False]
    assert others_can_lock(tmp / "idx")  # and released after
