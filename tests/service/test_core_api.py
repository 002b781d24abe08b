"""The core's API v1 additions: filters, identity verify, batch search, Embed, limits, batching."""

import threading
import time

import numpy as np
import pytest
from PIL import Image

from service.core import (
    DeadlineExceeded,
    ImageInput,
    InvalidInput,
    NotFound,
    SearchQuery,
    UpsertItem,
)
from tests.service.conftest import digit, encoded, make_core


@pytest.fixture(scope="module")
def ws(golden, tmp_path_factory):
    import shutil

    dst = tmp_path_factory.mktemp("api") / "ws"
    shutil.copytree(golden, dst)
    return dst


@pytest.fixture(scope="module")
def core(ws, tiny_checkpoint, digits_dir):
    c = make_core(ws, tiny_checkpoint, max_items=8)
    # six images carry metadata: 3 of them cam=a, 3 cam=b
    items = [UpsertItem(f"meta/{i}", digit(digits_dir, str(i)).read_bytes(), label=str(i),
                        metadata={"cam": "a" if i < 3 else "b", "i": str(i)}) for i in range(6)]
    assert c.upsert(items).inserted == 6
    yield c
    c.close()


def data(digits_dir, label, i=0):
    return ImageInput(data=digit(digits_dir, label, i).read_bytes())


def test_label_filter_returns_only_those_labels(core, digits_dir):
    r = core.search(data(digits_dir, "3"), 20, labels=["5", "8"])
    assert len(r.hits) == 20 and {h.label for h in r.hits} <= {"5", "8"}
    d = [h.distance for h in r.hits]
    assert d == sorted(d)


def test_metadata_filter_and_metadata_in_hits(core, digits_dir):
    r = core.search(data(digits_dir, "4"), 10, metadata={"cam": "b"})
    assert sorted(h.key for h in r.hits) == ["meta/3", "meta/4", "meta/5"]
    assert r.hits[0].key == "meta/4" and r.hits[0].metadata == {"cam": "b", "i": "4"}
    both = core.search(data(digits_dir, "4"), 10, metadata={"cam": "b", "i": "5"}, labels=["5"])
    assert [h.key for h in both.hits] == ["meta/5"]
    assert core.search(data(digits_dir, "4"), 10, metadata={"cam": "z"}).hits == []


def test_exclude_keys_and_max_distance(core, digits_dir):
    f = digit(digits_dir, "9", 4)
    own = f"9/{f.stem}"
    plain = core.search(ImageInput(data=f.read_bytes()), 5)
    assert plain.hits[0].key == own
    excl = core.search(ImageInput(data=f.read_bytes()), 5, exclude_keys=[own, "not/a-key"])
    assert own not in [h.key for h in excl.hits] and len(excl.hits) == 5
    assert [h.key for h in excl.hits[:4]] == [h.key for h in plain.hits[1:5]]
    cut = plain.hits[2].distance
    near = core.search(ImageInput(data=f.read_bytes()), 5, max_distance=cut)
    assert [h.key for h in near.hits] == [h.key for h in plain.hits[:3]]
    assert all(h.distance <= cut for h in near.hits)


def test_batch_search_matches_single_searches(core, digits_dir):
    f = digit(digits_dir, "2", 7)
    qs = [SearchQuery(ImageInput(data=f.read_bytes()), 4),
          SearchQuery(ImageInput(key=f"2/{f.stem}"), 4),
          SearchQuery(data(digits_dir, "6"), 3, labels=("6",))]
    batch = core.batch_search(qs)
    for q, r in zip(qs, batch, strict=True):
        single = core.search(q.query, q.k, labels=q.labels)
        assert [h.key for h in r.hits] == [h.key for h in single.hits]
        assert np.allclose([h.distance for h in r.hits], [h.distance for h in single.hits],
                           atol=1e-4)
    assert [h.key for h in batch[0].hits] == [h.key for h in batch[1].hits]


def test_verify_against_an_enrolled_identity(core, digits_dir):
    f = digit(digits_dir, "7", 3)
    r = core.verify_identity(ImageInput(data=f.read_bytes()), "7")
    assert r.enrolled_images == 40 and r.nearest_key == f"7/{f.stem}"
    assert r.distance == pytest.approx(0, abs=1e-3) and r.same
    assert r.mean_distance > r.distance and r.index_version == core.index.manifest.version
    strict = core.verify_identity(data(digits_dir, "1"), "7", threshold=0.0)
    assert not strict.same and strict.distance > 0
    with pytest.raises(NotFound, match="identity 'nobody'"):
        core.verify_identity(data(digits_dir, "1"), "nobody")


def test_embed_matches_the_embedder_and_keys(core, digits_dir):
    f = digit(digits_dir, "5", 2)
    out = core.embed([ImageInput(data=f.read_bytes()), ImageInput(key=f"5/{f.stem}")])
    ref = core.embedder.embed_images([Image.open(f)])[0]
    assert out.shape == (2, core.embedder.dim) and out.dtype == np.float32
    assert np.allclose(out[0], ref, atol=1e-5) and np.allclose(out[1], ref, atol=1e-4)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)


def test_limits_and_bad_input(core, digits_dir):
    img = data(digits_dir, "0")
    with pytest.raises(InvalidInput, match="limit is 8"):
        core.embed([img] * 9)
    with pytest.raises(InvalidInput, match="limit is 8"):
        core.batch_search([SearchQuery(img)] * 9)
    with pytest.raises(InvalidInput, match="no images"):
        core.embed([])
    with pytest.raises(InvalidInput, match="k must be"):
        core.search(img, -1)
    with pytest.raises(InvalidInput, match="max_distance"):
        core.search(img, 3, max_distance=float("nan"))
    with pytest.raises(InvalidInput, match="image b: empty image data"):
        core.verify(img, ImageInput(data=b""))
    with pytest.raises(InvalidInput, match="unsupported image format ICO"):
        core.search(ImageInput(data=encoded(Image.new("RGB", (16, 16)), "ICO")), 3)
    with pytest.raises(NotFound, match="collection 'elsewhere' is not served"):
        core.search(img, 3, collection="elsewhere")
    with pytest.raises(NotFound, match="no image with key 'nope'"):
        core.embed([ImageInput(key="nope")])
    with pytest.raises(DeadlineExceeded):
        core.search(img, 3, deadline=time.monotonic() - 1)


def test_describe(core):
    i = core.describe()
    assert i.collection == "default" and i.collections == ("default",)
    assert i.count == 406 and i.index_version == core.index.manifest.version
    assert i.factory == "Flat" and i.dimension == core.embedder.dim and i.metric == "cosine"
    assert i.recall_at_10 == 1.0 and i.threshold == core.threshold and i.face == "off"


def test_concurrent_requests_share_forward_passes(ws, tiny_checkpoint, digits_dir):
    sizes = []

    class Spy:
        def on_batch(self, name, size, depth):
            if name == "embed":
                sizes.append(size)

        def on_swap(self, *a):
            pass

    from indexer.catalog import open_catalog
    from indexer.versions import load_index_version
    from service.core import CoreOptions, SimilarityCore
    from training.models.embedder import Embedder

    c = SimilarityCore(Embedder.from_checkpoint(tiny_checkpoint), load_index_version(ws / "idx"),
                       open_catalog(f"sqlite:///{ws / 'cat.db'}"),
                       options=CoreOptions(max_batch=16, max_wait_ms=300), observer=Spy())
    images = [digit(digits_dir, str(i % 10), i).read_bytes() for i in range(12)]
    start, results = threading.Barrier(12), {}

    def call(i):
        start.wait()
        results[i] = c.search(ImageInput(data=images[i]), 1).hits[0].key

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    c.close()
    assert len(results) == 12 and sum(sizes) == 12
    assert max(sizes) > 1  # requests were embedded together
    for i in range(12):  # and each caller got its own answer
        assert results[i] == f"{i % 10}/{digit(digits_dir, str(i % 10), i).stem}"


def test_several_collections_one_server(workspace, tiny_checkpoint, digits_dir, tmp_path):
    """extra_indexes: each collection has its own index root, searches and changes stay in it."""
    from indexer.build import BuildConfig, build_index
    from indexer.catalog import open_catalog
    from indexer.versions import load_index_version
    from service.core import SimilarityCore
    from training.data.folders import list_image_folder
    from training.models.embedder import Embedder

    url = f"sqlite:///{workspace / 'cat.db'}"
    small = [s for s in list_image_folder(digits_dir) if s.label in ("0", "1")][::4]
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                            index_root=str(workspace / "idx_b"), catalog_url=url, collection="b",
                            num_workers=0, progress=False), samples=small)
    c = SimilarityCore(Embedder.from_checkpoint(tiny_checkpoint), load_index_version(workspace / "idx"),
                       open_catalog(url), extra_indexes=[load_index_version(workspace / "idx_b")])
    try:
        assert c.collections == ("default", "b") and c.describe("b").count == len(small)
        q = ImageInput(data=digit(digits_dir, "0", 0).read_bytes())
        in_b = c.search(q, 50, collection="b").hits
        assert len(in_b) == len(small) and {h.label for h in in_b} == {"0", "1"}
        assert len(c.search(q, 50).hits) == 50  # the default collection is untouched
        key = f"0/{digit(digits_dir, '0', 0).stem}"  # the same key lives in both collections
        assert c.search(ImageInput(key=key, collection="b"), 1, collection="b").hits[0].key == key
        r = c.upsert([UpsertItem("b/new", digit(digits_dir, "7").read_bytes(), label="7",
                                 collection="b")])
        assert r.count == len(small) + 1 and c.describe().count == 400
        assert c.search(q, 5, collection="b", labels=["7"]).hits[0].key == "b/new"
        with pytest.raises(NotFound):
            c.search(ImageInput(key="b/new"), 1)  # not in the default collection
        assert c.swap_index(workspace / "idx_b") == r.index_version  # found by its root
    finally:
        c.close()


def test_hit_rows_are_cached_briefly_and_cleared_by_own_changes(workspace, tiny_checkpoint,
                                                                digits_dir):
    from sqlalchemy import update

    from indexer.catalog import ImageRow

    c = make_core(workspace, tiny_checkpoint, catalog_cache_seconds=3600)
    try:
        f = digit(digits_dir, "6", 1)
        q = ImageInput(data=f.read_bytes())
        assert c.search(q, 1).hits[0].label == "6"
        with c.sessions.begin() as s:  # another process relabels the image
            s.execute(update(ImageRow).where(ImageRow.key == f"6/{f.stem}").values(label="six"))
        assert c.search(q, 1).hits[0].label == "6"  # cached (ttl: 1 h here)
        c.delete(["0/" + digit(digits_dir, "0").stem])  # the service's own change clears it
        assert c.search(q, 1).hits[0].label == "six"
    finally:
        c.close()
    nocache = make_core(workspace, tiny_checkpoint, catalog_cache_seconds=0)
    try:
        with nocache.sessions.begin() as s:
            s.execute(update(ImageRow).where(ImageRow.key == f"6/{f.stem}").values(label="6"))
        assert nocache.search(q, 1).hits[0].label == "6"
    finally:
        nocache.close()
