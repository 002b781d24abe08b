"""indexer.publish: every writer's version gets its manifest count, CURRENT and catalogue row."""

import numpy as np
import pytest

from indexer.catalog import index_versions, open_catalog, upsert_images
from indexer.factory import new_index
from indexer.incremental import add_to_index, clone_version, publish_changes, remove_from_index
from indexer.publish import publish_version
from indexer.rebuild import rebuild_version
from indexer.search import SearchJob, search_batch, search_index
from indexer.versions import Manifest, current_version_name, load_index_version, read_manifest

D = 8


def _rows(keys):
    return [{"key": k, "path": f"/img/{k}.jpg", "label": k[:1], "sha256": f"{i:064x}"}
            for i, k in enumerate(keys)]


@pytest.fixture(params=["Flat", "HNSW16"])
def published(request, tmp_path):
    x = np.random.default_rng(0).standard_normal((50, D)).astype(np.float32)
    Session = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    with Session.begin() as s:
        ids = np.array([r.id for r in upsert_images(s, _rows([f"k{i}" for i in range(50)]),
                                                    collection="c")], np.int64)
    index = new_index(request.param, D)
    index.add_with_ids(x, ids)
    m = Manifest(version="v1", factory=request.param, metric="l2", dimension=D,
                 count=-1,  # wrong on purpose: the publish counts the index itself
                 checkpoint_sha256="c" * 64, model_version="m", threshold=1.0, collection="c")
    with Session.begin() as s:
        v = publish_version(tmp_path / "idx", index, m, session=s)
    return tmp_path / "idx", Session, v, x, ids


def _rows_of(Session, collection="c"):
    with Session() as s:
        return [(r.name, r.state, r.count) for r in index_versions(s, collection=collection)]


def test_publish_sets_count_current_and_the_catalogue_row(published):
    root, Session, v, _, _ = published
    assert v.manifest.count == read_manifest(root).count == 50
    assert current_version_name(root) == v.manifest.version == "v1"
    assert _rows_of(Session) == [("v1", "published", 50)]


def test_changes_and_rebuilds_are_recorded_and_retire_their_parent(published):
    root, Session, v, x, ids = published
    changed = clone_version(v)
    with Session.begin() as s:
        remove_from_index(s, changed, ["k0", "k1"], collection="c")
        publish_changes(root, changed, session=s)
    m = changed.manifest  # HNSW cannot remove: its two entries stay stored, tombstoned
    assert m.count == changed.index.ntotal == 48 + m.tombstones and m.parent_version == "v1"
    path = rebuild_version(root, load_index_version(root), sessions=Session)
    rows = _rows_of(Session)
    assert [r[0] for r in rows] == ["v1", changed.manifest.version, path.name]
    assert [r[1] for r in rows] == ["retired", "retired", "published"]
    assert rows[-1][2] == 48 and read_manifest(root).tombstones == 0


def test_a_rolled_back_change_leaves_no_row(published):
    root, Session, v, x, _ = published
    changed = clone_version(v)
    with pytest.raises(RuntimeError, match="abort"), Session.begin() as s:
        add_to_index(s, changed, _rows(["new"]), x[:1] + 1, collection="c")
        publish_changes(root, changed, session=s)
        raise RuntimeError("abort")  # as a crash or failure before the commit would
    assert [r[0] for r in _rows_of(Session)] == ["v1"]


def test_search_batch_answers_plain_and_filtered_jobs_as_one_path(published):
    root, _, v, x, ids = published
    plain = SearchJob(x[3], 5)
    only = SearchJob(x[3], 5, allowed=ids[10:20])
    not_3 = SearchJob(x[3], 5, excluded=ids[3:4])
    a, b, c = search_batch(v, [plain, only, not_3])
    assert a.ids[0] == ids[3] and list(a.ids) == list(search_index(v, x[3:4], 5)[1][0])
    assert set(b.ids) <= set(ids[10:20]) and len(b.ids) == 5
    assert ids[3] not in c.ids and list(c.ids[:4]) == list(a.ids[1:5])
    assert a.version == b.version == c.version == "v1"


def test_the_rebuild_command_records_its_version_when_given_the_catalogue(published, tmp_path):
    import argparse

    from indexer.cli import register

    root, Session, *_ = published
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(["index", "rebuild", "--index-root", str(root),
                         "--catalog", f"sqlite:///{tmp_path / 'c.db'}"])
    assert args.func(args) == 0
    assert _rows_of(Session)[-1] == (current_version_name(root), "published", 50)


def test_a_version_whose_manifest_misstates_the_dimension_is_refused(published):
    """Searchers trust the manifest's dimension (the FAISS store's fast path reads that many
    floats), so no version may be built whose index has another."""
    from dataclasses import replace

    from indexer.versions import IndexVersion

    _, _, v, _, _ = published
    with pytest.raises(ValueError, match=f"{D}-d, its manifest says {D + 1}"):
        IndexVersion(v.path, replace(v.manifest, dimension=D + 1), v.index)
