import numpy as np
import pytest
from sqlalchemy import func, select

from indexer.catalog import ImageRow, all_images, image_by_key, open_catalog, upsert_images
from indexer.construct import IndexingConfig
from indexer.factory import new_index
from indexer.incremental import (
    add_to_index,
    clone_version,
    drift,
    needs_rebuild,
    publish_changes,
    remove_from_index,
)
from indexer.rebuild import IndexChanged, rebuild_version, stored_vectors
from indexer.search import search_index
from indexer.versions import (
    IndexVersion,
    Manifest,
    current_version_name,
    load_index_version,
    publish_index_version,
)

D = 16
FACTORIES = ["Flat", "IVF8,Flat", "HNSW16"]


def _rows(keys):
    return [{"key": k, "path": f"/img/{k}.jpg", "label": k[:1], "sha256": f"{i:064x}"}
            for i, k in enumerate(keys)]


@pytest.fixture(params=FACTORIES)
def setup(request, tmp_path):
    """A catalogue of 300 images and a published version over them, built with ``factory``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, D)).astype(np.float32)
    Session = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    with Session.begin() as s:
        ids = np.array([r.id for r in upsert_images(s, _rows([f"k{i}" for i in range(300)]),
                                                    collection="c")], np.int64)
    index = new_index(request.param, D)
    index.train(x)
    index.add_with_ids(x, ids)
    params = {"nprobe": 8} if "IVF" in request.param else {"efSearch": 64} if "HNSW" in request.param else {}
    m = Manifest(version="v1", factory=request.param, metric="l2", dimension=D, count=300,
                 checkpoint_sha256="c" * 64, model_version="m", threshold=1.0, collection="c",
                 search_params=params)
    publish_index_version(tmp_path / "idx", index, m)
    return tmp_path / "idx", Session, load_index_version(tmp_path / "idx"), x, rng


def _top1(version, q):
    return int(search_index(version, q[None], 1)[1][0, 0])


def test_add_makes_new_images_searchable_under_their_catalogue_ids(setup):
    root, Session, version, x, rng = setup
    new = rng.standard_normal((5, D)).astype(np.float32)
    with Session.begin() as s:
        ids = add_to_index(s, version, _rows([f"new{i}" for i in range(5)]), new, collection="c")
    with Session() as s:
        assert [image_by_key(s, f"new{i}", collection="c").id for i in range(5)] == ids
    assert [_top1(version, v) for v in new] == ids
    assert version.index.ntotal == 305 and version.manifest.added_since_build == 5


def test_re_adding_a_key_keeps_its_id_and_replaces_its_vector(setup):
    root, Session, version, x, rng = setup
    with Session() as s:
        old_id = image_by_key(s, "k7", collection="c").id
    v = rng.standard_normal((1, D)).astype(np.float32)
    with Session.begin() as s:
        (new_id,) = add_to_index(s, version, _rows(["k7"]), v, collection="c")
    assert new_id == old_id
    assert _top1(version, v[0]) == old_id
    # the old vector no longer answers for k7: its nearest neighbour is someone else
    assert _top1(version, x[7]) != old_id
    with Session() as s:
        assert s.scalar(select(func.count()).select_from(ImageRow)) == 300


def test_remove_deletes_row_and_vector_and_search_still_returns_k_live_hits(setup):
    root, Session, version, x, rng = setup
    with Session() as s:
        gone = {image_by_key(s, f"k{i}", collection="c").id for i in range(10)}
    with Session.begin() as s:
        assert remove_from_index(s, version, [f"k{i}" for i in range(10)] + ["nope"],
                                 collection="c") == 10
    with Session() as s:
        assert len(all_images(s, collection="c")) == 290
    _, ids = search_index(version, x[:10], 20)
    assert (ids >= 0).all() and not gone & set(ids.ravel().tolist())
    _, raw = version.index.search(x[:10], 20)  # the plain FAISS call never yields a removed id
    assert not gone & set(raw.ravel().tolist())
    if version.manifest.factory.startswith("HNSW"):
        assert version.manifest.tombstones == 10 and version.index.ntotal == 300
    else:
        assert version.manifest.tombstones == 0 and version.index.ntotal == 290


def test_changes_publish_as_a_new_version_that_loads_identically(setup):
    root, Session, version, x, rng = setup
    with Session.begin() as s:
        remove_from_index(s, version, ["k1", "k2"], collection="c")
        add_to_index(s, version, _rows(["n1"]), x[:1] + 5, collection="c")
    before = search_index(version, x[:20], 5)
    path = publish_changes(root, version, keep=5)
    loaded = load_index_version(root)
    assert loaded.path == path and loaded.manifest.parent_version == "v1"
    assert loaded.manifest.search_params == version.manifest.search_params
    np.testing.assert_array_equal(search_index(loaded, x[:20], 5)[1], before[1])
    assert loaded.manifest.count_at_build == 300 and drift(loaded.manifest) == pytest.approx(3 / 300)


def test_drift_beyond_the_limit_asks_for_a_rebuild(setup):
    root, Session, version, x, rng = setup
    assert not needs_rebuild(version.manifest)
    with Session.begin() as s:
        remove_from_index(s, version, [f"k{i}" for i in range(70)], collection="c")
    assert needs_rebuild(version.manifest, max_drift=0.2)
    assert not needs_rebuild(version.manifest, max_drift=0.3)


def test_a_failed_index_change_rolls_the_catalogue_back(setup):
    root, Session, version, x, rng = setup
    with pytest.raises(ValueError, match=r"vectors must be"):
        with Session.begin() as s:
            add_to_index(s, version, _rows(["bad"]), np.zeros((1, D + 1), np.float32),
                         collection="c")
    with pytest.raises(ValueError, match="serves collection"):
        with Session.begin() as s:
            add_to_index(s, version, _rows(["bad"]), np.zeros((1, D), np.float32),
                         collection="other")
    with Session() as s:
        assert image_by_key(s, "bad", collection="c") is None
    assert version.index.ntotal == 300


def test_a_clone_changes_without_touching_the_served_version(setup):
    root, Session, version, x, rng = setup
    copy = clone_version(version)
    with Session.begin() as s:
        remove_from_index(s, copy, ["k0"], collection="c")
    assert version.index.ntotal == 300 and version.manifest.removed_since_build == 0
    assert copy.manifest.removed_since_build == 1
    assert isinstance(copy, IndexVersion)


def test_a_rebuild_drops_drift_and_tombstones_and_keeps_the_live_vectors(setup):
    root, Session, version, x, rng = setup
    with Session.begin() as s:
        remove_from_index(s, version, [f"k{i}" for i in range(80)], collection="c")
        new_ids = add_to_index(s, version, _rows([f"n{i}" for i in range(20)]), x[:20] + 0.01,
                               collection="c")
    assert needs_rebuild(version.manifest)
    publish_changes(root, version)
    path = rebuild_version(root, load_index_version(root),
                           cfg=IndexingConfig(factory=version.manifest.factory, tuning_queries=100))
    rebuilt = load_index_version(root)
    m = rebuilt.manifest
    assert rebuilt.path == path and m.parent_version == version.manifest.version
    assert (m.count, m.tombstones, m.added_since_build, m.count_at_build) == (240, 0, 0, 240)
    assert not needs_rebuild(m) and m.recall_at_10 >= 0.95
    vectors, ids = stored_vectors(rebuilt.index)
    with Session() as s:
        assert sorted(ids.tolist()) == sorted(r.id for r in all_images(s, collection="c"))
    assert set(new_ids) <= set(ids.tolist())
    np.testing.assert_array_equal(vectors[np.argsort(ids)][-20:], x[:20] + 0.01)


def test_a_rebuild_never_publishes_over_a_change_made_while_it_built(setup, monkeypatch):
    """An Upsert published while the rebuild re-trained would be undone by publishing the
    rebuild (made from the older version): it refuses, and CURRENT keeps the change."""
    root, Session, version, x, rng = setup
    import indexer.rebuild

    real = indexer.rebuild.index_vectors

    def build_while_someone_upserts(*a, **kw):
        with Session.begin() as s:
            changed = clone_version(load_index_version(root))
            add_to_index(s, changed, _rows(["late"]), x[:1] + 0.5, collection="c")
            publish_changes(root, changed)
        return real(*a, **kw)

    monkeypatch.setattr(indexer.rebuild, "index_vectors", build_while_someone_upserts)
    with pytest.raises(IndexChanged, match="run the rebuild again"):
        rebuild_version(root, version,
                        cfg=IndexingConfig(factory=version.manifest.factory, tuning_queries=100))
    now = load_index_version(root)
    assert now.manifest.parent_version == version.manifest.version  # the Upsert's version
    assert now.manifest.count == 301 and current_version_name(root) == now.manifest.version


def test_compressed_codes_cannot_be_rebuilt_in_place():
    x = np.random.default_rng(0).standard_normal((3000, D)).astype(np.float32)
    index = new_index("IVF16,PQ4", D)
    index.train(x)
    index.add_with_ids(x, np.arange(3000))
    with pytest.raises(ValueError, match="imgsim reindex"):
        stored_vectors(index)
