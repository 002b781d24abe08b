"""Upsert and Delete: idempotent by key, persisted as index versions, never half-applied."""

import numpy as np
import pytest
from sqlalchemy import event, select

from indexer.catalog import ImageRow
from indexer.versions import current_version_name
from service.core import FailedPrecondition, ImageInput, InvalidInput, NotFound, UpsertItem
from tests.service.conftest import digit, make_core


@pytest.fixture()
def core(workspace, tiny_checkpoint):
    c = make_core(workspace, tiny_checkpoint, max_upsert_items=5, max_upsert_bytes=20_000)
    yield c
    c.close()


def item(digits_dir, key, label="9", i=0, **meta):
    return UpsertItem(key, digit(digits_dir, label, i).read_bytes(), label=label, metadata=meta)


def keys_in_catalog(core, prefix):
    with core.sessions() as s:
        return sorted(s.scalars(select(ImageRow.key).where(ImageRow.key.like(f"{prefix}%"))))


def versions(ws):
    return sorted(p.name for p in (ws / "idx" / "versions").iterdir() if not p.name.startswith("."))


def test_upsert_inserts_persists_and_is_idempotent(core, workspace, tiny_checkpoint, digits_dir):
    before = core.index.index.ntotal
    items = [item(digits_dir, "u/a", "3", 1, cam="x"), item(digits_dir, "u/b", "4", 2)]
    r = core.upsert(items)
    assert (r.inserted, r.updated, r.unchanged, r.count) == (2, 0, 0, before + 2)
    assert r.index_version == core.index.manifest.version == current_version_name(workspace / "idx")
    hit = core.search(ImageInput(data=items[0].data), 1).hits[0]
    assert (hit.key, hit.label, hit.metadata) == ("u/a", "3", {"cam": "x"})
    assert hit.distance == pytest.approx(0, abs=1e-3)
    # the same stream again changes nothing, not even the version
    n_versions = len(versions(workspace))
    again = core.upsert(items)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    assert again.index_version == r.index_version and len(versions(workspace)) == n_versions
    # a restarted server (loaded from disk) serves the upserted images
    restarted = make_core(workspace, tiny_checkpoint)
    assert restarted.index.index.ntotal == before + 2
    assert restarted.search(ImageInput(key="u/b"), 1).hits[0].key == "u/b"
    restarted.close()


def test_upsert_replaces_by_key(core, digits_dir):
    core.upsert([item(digits_dir, "u/a", "3", 1)])
    with core.sessions() as s:
        old_id = s.scalars(select(ImageRow.id).where(ImageRow.key == "u/a")).one()
    count = core.index.index.ntotal
    new = item(digits_dir, "u/a", "8", 5, kind="replaced")
    r = core.upsert([new])
    assert (r.inserted, r.updated, r.count) == (0, 1, count)
    with core.sessions() as s:
        row = s.scalars(select(ImageRow).where(ImageRow.key == "u/a")).one()
    assert row.id == old_id and row.label == "8" and row.meta == {"kind": "replaced"}
    hit = core.search(ImageInput(data=new.data), 1).hits[0]
    assert hit.key == "u/a" and hit.distance == pytest.approx(0, abs=1e-3)
    vec = core.vector(ImageInput(key="u/a"))
    assert np.allclose(vec, core.vector(ImageInput(data=new.data)), atol=1e-4)


def test_a_bad_image_fails_the_whole_stream(core, workspace, digits_dir):
    state = (core.index.manifest.version, core.index.index.ntotal, versions(workspace))
    items = [item(digits_dir, "bad/0"), UpsertItem("bad/1", b"not an image"),
             item(digits_dir, "bad/2")]
    with pytest.raises(InvalidInput, match=r"item 1 \(key 'bad/1'\): cannot decode"):
        core.upsert(items)
    assert (core.index.manifest.version, core.index.index.ntotal, versions(workspace)) == state
    assert keys_in_catalog(core, "bad/") == []
    assert not (workspace / "idx" / "blobs").exists() or not any(
        (workspace / "idx" / "blobs").rglob("*.png"))


def test_failure_while_publishing_rolls_everything_back(core, workspace, digits_dir, monkeypatch):
    import service.mutations

    state = (core.index.manifest.version, core.index.index.ntotal, versions(workspace))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(service.mutations, "publish_changes", boom)
    with pytest.raises(OSError, match="disk full"):
        core.upsert([item(digits_dir, "fail/0")])
    assert keys_in_catalog(core, "fail/") == []
    assert (core.index.manifest.version, core.index.index.ntotal, versions(workspace)) == state
    assert list((workspace / "idx" / "blobs").rglob("*.png")) == []


def test_failed_commit_restores_current(core, workspace, digits_dir):
    old = core.index
    pointer_before = current_version_name(workspace / "idx")

    def refuse(session):
        raise RuntimeError("commit refused")

    event.listen(core.sessions, "before_commit", refuse)
    try:
        with pytest.raises(RuntimeError, match="commit refused"):
            core.delete(["0/" + digit(digits_dir, "0", 0).stem])
    finally:
        event.remove(core.sessions, "before_commit", refuse)
    assert core.index is old  # still served
    from indexer.versions import load_index_version

    on_disk = load_index_version(workspace / "idx")  # CURRENT moved on, to the same content
    assert current_version_name(workspace / "idx") != pointer_before
    assert on_disk.index.ntotal == old.index.ntotal
    assert core.search(ImageInput(key="0/" + digit(digits_dir, "0", 0).stem), 1).hits


def test_stream_rules(core, digits_dir):
    with pytest.raises(InvalidInput, match="more than 5 images"):
        core.upsert([item(digits_dir, f"k/{i}") for i in range(6)])
    big = UpsertItem("k/big", item(digits_dir, "k").data + b"\0" * 20_000)
    with pytest.raises(InvalidInput, match="bytes of images in one Upsert stream"):
        core.upsert([item(digits_dir, "k/0"), big])
    with pytest.raises(InvalidInput, match="appears twice"):
        core.upsert([item(digits_dir, "k/0"), item(digits_dir, "k/0")])
    with pytest.raises(InvalidInput, match="one collection"):
        core.upsert([item(digits_dir, "k/0"),
                     UpsertItem("k/1", item(digits_dir, "k").data, collection="other")])
    with pytest.raises(NotFound, match="'other' is not served"):
        core.upsert([UpsertItem("k/1", item(digits_dir, "k").data, collection="other")])
    with pytest.raises(InvalidInput, match="empty image data"):
        core.upsert([UpsertItem("k/1", b"")])
    with pytest.raises(InvalidInput, match="key must be"):
        core.upsert([UpsertItem("", item(digits_dir, "k").data)])
    with pytest.raises(InvalidInput, match="empty Upsert stream"):
        core.upsert([])
    assert keys_in_catalog(core, "k/") == []


def test_delete(core, workspace, digits_dir):
    keys = [f"1/{digit(digits_dir, '1', i).stem}" for i in range(3)]
    count = core.index.index.ntotal
    with pytest.raises(NotFound, match="nothing deleted"):
        core.delete([keys[0], "no/such"])
    assert core.index.index.ntotal == count and len(keys_in_catalog(core, "1/")) == 40
    r = core.delete(keys[:2])
    assert (r.deleted, r.count) == (2, count - 2)
    assert r.index_version == current_version_name(workspace / "idx")
    with pytest.raises(NotFound):
        core.vector(ImageInput(key=keys[0]))
    hits = core.search(ImageInput(data=digit(digits_dir, "1", 0).read_bytes()), 50).hits
    assert not {h.key for h in hits} & set(keys[:2])
    r = core.delete([keys[2], "no/such"], ignore_missing=True)
    assert (r.deleted, r.missing) == (1, ("no/such",))
    with pytest.raises(InvalidInput, match="no keys"):
        core.delete([])


def test_index_without_catalogue_ids_is_a_failed_precondition(core, digits_dir, monkeypatch):
    import service.mutations

    def not_writable(*a, **k):
        raise TypeError("neither an IndexIDMap2 nor an IVF index")

    monkeypatch.setattr(service.mutations, "add_to_index", not_writable)
    with pytest.raises(FailedPrecondition, match="cannot change this index"):
        core.upsert([item(digits_dir, "x/0")])
    assert keys_in_catalog(core, "x/") == []


def test_upsert_and_delete_record_their_versions_in_the_catalogue(core, digits_dir):
    from indexer.catalog import index_versions

    up = core.upsert([item(digits_dir, "rec/0")])
    gone = core.delete(["rec/0"])
    with core.sessions() as s:
        rows = {r.name: (r.state, r.count) for r in index_versions(s, collection="default")}
    assert rows[up.index_version] == ("retired", up.count)
    assert rows[gone.index_version] == ("published", gone.count)
    assert [n for n, (state, _) in rows.items() if state == "published"] == [gone.index_version]
