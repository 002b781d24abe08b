"""Two writers of CURRENT (reindex, the service's Upsert/Delete) never lose each other's changes."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from sqlalchemy import select

import indexer.reindex as rx
import service.mutations
from indexer.catalog import ImageRow, image_file
from indexer.factory import stored_ids
from indexer.versions import current_version_name, load_index_version, publish_lock
from service.core import DeadlineExceeded, FailedPrecondition, Unavailable, UpsertItem
from tests.service.conftest import digit, make_core
from training.checkpoint import load_checkpoint, save_checkpoint
from training.models.embedder import Embedder


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory, tiny_checkpoint):
    """The tiny model with perturbed weights: another checkpoint, other embeddings."""
    ckpt = load_checkpoint(tiny_checkpoint)
    g = torch.Generator().manual_seed(1)
    ckpt.state_dict = {k: v + 0.05 * torch.randn(v.shape, generator=g)
                       if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    ckpt.spec = replace(ckpt.spec, name="tiny-other")
    return save_checkpoint(tmp_path_factory.mktemp("other") / "model.pt", ckpt)


@pytest.fixture()
def core(workspace, tiny_checkpoint):
    c = make_core(workspace, tiny_checkpoint)  # no CURRENT watcher: only writes catch up
    yield c
    c.close()


def item(digits_dir, key, label="9", i=0):
    return UpsertItem(key, digit(digits_dir, label, i).read_bytes(), label=label)


def catalogue(core) -> dict[str, tuple[int, str]]:
    with core.sessions() as s:
        return {r.key: (r.id, image_file(r.path, r.storage, core.live().root)) for r in s.execute(
            select(ImageRow.key, ImageRow.id, ImageRow.path, ImageRow.storage)
            .where(ImageRow.collection == "default"))}


def assert_index_matches_catalogue(ws, core):
    ids = stored_ids(load_index_version(ws / "idx").index)
    assert sorted(ids.tolist()) == sorted(i for i, _ in catalogue(core).values())


def test_changes_made_while_a_reindex_builds_are_in_its_published_version(
        core, workspace, digits_dir, other_checkpoint, monkeypatch):
    ws = workspace
    doomed = "3/" + digit(digits_dir, "3", 0).stem
    real_lock = rx.publish_lock
    calls = []

    def lock_after_changes(root, **kw):
        # the reindex has planned, embedded, built and tuned; before it publishes, the service
        # applies an Upsert and a Delete (each publishing a version of its own)
        if not calls:
            calls.append(root)
            core.upsert([item(digits_dir, "late/a", "7", 3)])
            core.delete([doomed])
        return real_lock(root, **kw)

    monkeypatch.setattr(rx, "publish_lock", lock_after_changes)
    path = rx.reindex(rx.ReindexConfig(
        checkpoint=str(other_checkpoint), catalog_url=f"sqlite:///{ws / 'cat.db'}",
        index_root=str(ws / "idx"), collection="default", factory="Flat", chunk_size=128,
        num_workers=0, progress=False, tuning_queries=100))
    assert calls, "the reindex never took the publish lock"
    published = load_index_version(ws / "idx")
    assert published.path == path
    other = Embedder.from_checkpoint(other_checkpoint)
    assert published.manifest.checkpoint_sha256 == other.checkpoint_sha256
    assert published.manifest.build_params["caught_up_at_publish"] == 2
    rows = catalogue(core)
    assert "late/a" in rows and doomed not in rows
    assert_index_matches_catalogue(ws, core)  # the late image is in, the deleted one is out
    late_id, late_path = rows["late/a"]
    np.testing.assert_allclose(published.index.reconstruct(late_id),  # the new model's vector
                               other.embed_paths([late_path])[0], atol=1e-5)

    # the server still serves the old model: it must not write over the reindexed version
    with pytest.raises(FailedPrecondition, match="restart this server with that checkpoint"):
        core.upsert([item(digits_dir, "after/b", "1", 2)])
    assert "after/b" not in catalogue(core)
    assert current_version_name(ws / "idx") == published.manifest.version


def test_a_stale_server_applies_its_change_on_top_of_the_new_version(core, workspace,
                                                                     tiny_checkpoint, digits_dir):
    ws = workspace
    stale = core.index.manifest.version
    replica = make_core(ws, tiny_checkpoint)  # another process serving the same index
    try:
        theirs = replica.upsert([item(digits_dir, "replica/x", "2", 4)]).index_version
    finally:
        replica.close()
    assert core.index.manifest.version == stale != theirs == current_version_name(ws / "idx")
    r = core.upsert([item(digits_dir, "stale/y", "5", 6)])
    served = core.index
    assert r.index_version == served.manifest.version == current_version_name(ws / "idx")
    assert served.manifest.parent_version == theirs  # not a child of the stale version
    rows = catalogue(core)
    assert {rows["replica/x"][0], rows["stale/y"][0]} <= set(stored_ids(served.index).tolist())
    assert_index_matches_catalogue(ws, core)
    # a Delete catches up the same way
    replica = make_core(ws, tiny_checkpoint)
    try:
        replica.upsert([item(digits_dir, "replica/z", "6", 7)])
    finally:
        replica.close()
    core.delete(["stale/y"])
    assert "replica/z" in catalogue(core)
    assert_index_matches_catalogue(ws, core)


def test_a_change_waits_for_another_publisher_then_gives_up_cleanly(core, workspace, digits_dir,
                                                                    monkeypatch):
    import threading
    import time

    ws = workspace
    before = current_version_name(ws / "idx")
    monkeypatch.setattr(service.mutations, "PUBLISH_LOCK_SECONDS", 0.2)
    outcome = {}

    def other_thread(fn):  # the lock is reentrant in one thread, as another process it is not
        t = threading.Thread(target=lambda: outcome.update(r=_catch(fn)))
        t.start()
        t.join()
        return outcome["r"]

    with publish_lock(ws / "idx"):  # e.g. a reindex catching up and writing its version
        err = other_thread(lambda: core.upsert([item(digits_dir, "busy/a")]))
        assert isinstance(err, Unavailable) and "retry" in str(err)
        err = other_thread(lambda: core.delete(["busy/a"], ignore_missing=True))
        assert isinstance(err, Unavailable)
        late = other_thread(lambda: core.upsert([item(digits_dir, "busy/a")],
                                                deadline=time.monotonic() - 1))
        assert isinstance(late, DeadlineExceeded)
    assert "busy/a" not in catalogue(core) and current_version_name(ws / "idx") == before
    assert core.upsert([item(digits_dir, "busy/a")]).inserted == 1  # free again


def _catch(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (the test inspects it)
        return e
