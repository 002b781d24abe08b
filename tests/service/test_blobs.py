"""Uploaded image blobs go when no catalogue row references them; `imgsim blobs gc` sweeps orphans."""

import os

import pytest
from sqlalchemy import event

from imgsim.cli import main
from service.core import UpsertItem
from service.store import BlobStore
from tests.service.conftest import digit, make_core


@pytest.fixture()
def core(workspace, tiny_checkpoint):
    c = make_core(workspace, tiny_checkpoint)
    yield c
    c.close()


def put(core, digits_dir, key, label="9", i=0):
    data = digit(digits_dir, label, i).read_bytes()
    core.upsert([UpsertItem(key, data, label=label)])
    return BlobStore(core.blob_dir(core.lives["default"])).path_for(
        __import__("hashlib").sha256(data).hexdigest(), "png")


def blob_files(ws):
    return sorted(p for p in (ws / "idx" / "blobs").rglob("*") if p.is_file())


def test_a_shared_blob_goes_with_its_last_reference(core, workspace, digits_dir):
    shared = put(core, digits_dir, "a/1", "9", 0)
    assert put(core, digits_dir, "a/2", "9", 0) == shared  # identical content: one file
    other = put(core, digits_dir, "a/3", "8", 1)
    assert blob_files(workspace) == sorted([shared, other])
    core.delete(["a/1"])
    assert shared.is_file()  # a/2 still references it
    core.delete(["a/2", "a/3"])
    assert blob_files(workspace) == []


def test_new_content_under_a_key_removes_the_old_blob(core, workspace, digits_dir):
    old = put(core, digits_dir, "k", "4", 0)
    new = put(core, digits_dir, "k", "4", 1)
    assert old != new and blob_files(workspace) == [new]


def test_images_catalogued_from_their_own_files_are_never_removed(core, digits_dir):
    own = digit(digits_dir, "2", 5)  # catalogued by `imgsim index build` from this path
    core.delete(["2/" + own.stem])
    assert own.is_file()
    store = BlobStore(core.blob_dir(core.lives["default"]))
    assert store.sha_of(own) is None


def test_a_failed_commit_keeps_the_blob(core, workspace, digits_dir):
    blob = put(core, digits_dir, "keep/1", "6", 2)

    def refuse(session):
        raise RuntimeError("commit refused")

    event.listen(core.sessions, "before_commit", refuse)
    try:
        with pytest.raises(RuntimeError, match="commit refused"):
            core.delete(["keep/1"])
    finally:
        event.remove(core.sessions, "before_commit", refuse)
    assert blob.is_file()  # the row is still there, so is its image


def test_gc_sweeps_what_a_crash_left_and_nothing_else(core, workspace, digits_dir, monkeypatch,
                                                      capsys):
    kept = put(core, digits_dir, "gc/keep", "1", 0)
    orphan = put(core, digits_dir, "gc/gone", "3", 3)
    monkeypatch.setattr(BlobStore, "remove_unreferenced",  # the server dies after the commit
                        lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
    core.delete(["gc/gone"])
    monkeypatch.undo()
    assert orphan.is_file()
    tmp = kept.parent / ".blob-interrupted"  # an interrupted write
    tmp.write_bytes(b"partial")
    args = ["blobs", "gc", "--index-root", str(workspace / "idx"),
            "--catalog", f"sqlite:///{workspace / 'cat.db'}"]
    assert main(args) == 0  # default --min-age-seconds: fresh files are left alone
    assert orphan.is_file() and tmp.is_file()
    assert main([*args, "--min-age-seconds", "0", "--dry-run"]) == 0
    assert orphan.is_file() and str(orphan) in capsys.readouterr().out
    old = os.stat(kept).st_mtime - 3600
    for p in (kept, orphan, tmp):
        os.utime(p, (old, old))
    assert main(args) == 0
    assert blob_files(workspace) == [kept]
    assert "removed 2 orphan file(s)" in capsys.readouterr().out
    assert main([*args, "--min-age-seconds", "-1"]) == 2
