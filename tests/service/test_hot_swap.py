"""Hot swaps: Reload and the CURRENT watcher switch versions under load, and refuse other models'."""

import threading
import time
from dataclasses import replace

import faiss
import numpy as np
import pytest

from indexer.versions import new_version_name, publish_index_version
from service.core import FailedPrecondition, ImageInput, NotFound
from tests.service.conftest import digit, make_core


def publish_copy(core, ws, *, drop: int = 0, checkpoint_sha256: str | None = None) -> str:
    """Publish the served index again as a new version (minus ``drop`` vectors)."""
    v = core.index
    index = faiss.clone_index(v.index)
    if drop:
        ids = faiss.vector_to_array(index.id_map)[:drop]
        index.remove_ids(np.ascontiguousarray(ids))
    m = replace(v.manifest, version=new_version_name(), count=int(index.ntotal),
                checkpoint_sha256=checkpoint_sha256 or v.manifest.checkpoint_sha256, created_at="")
    publish_index_version(ws / "idx", index, m)
    return m.version


@pytest.fixture()
def core(workspace, tiny_checkpoint):
    c = make_core(workspace, tiny_checkpoint)
    yield c
    c.close()


def test_reload_switches_and_refuses_another_models_index(core, workspace):
    first = core.index.manifest.version
    second = publish_copy(core, workspace, drop=3)
    coll, old, new = core.reload()
    assert (coll, old, new) == ("default", first, second)
    assert core.describe().count == core.index.index.ntotal == 397
    assert core.reload() == ("default", second, second)  # nothing newer: no-op
    bad = publish_copy(core, workspace, checkpoint_sha256="f" * 64)
    with pytest.raises(FailedPrecondition, match="built with checkpoint ffffffffffff"):
        core.reload()
    assert core.index.manifest.version == second  # still serving the good one
    assert core.reload(version=first)[2] == first  # explicit older version
    with pytest.raises(NotFound, match="no index version 'v1'"):
        core.reload(version="v1")
    assert bad != second


def test_watcher_swaps_without_failing_concurrent_searches(core, workspace, digits_dir):
    images = [digit(digits_dir, str(i), i).read_bytes() for i in range(10)]
    seen, errors, stop = set(), [], threading.Event()

    def hammer(n):
        while not stop.is_set():
            try:
                r = core.search(ImageInput(data=images[n % 10]), 3)
                assert len(r.hits) == 3
                seen.add(r.index_version)
            except Exception as e:  # any failure fails the test
                errors.append(e)
            n += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        core.watch(0.05)
        first = core.index.manifest.version
        versions = [first]
        for _ in range(3):
            versions.append(publish_copy(core, workspace, drop=1))
            deadline = time.monotonic() + 20
            while core.index.manifest.version != versions[-1] and time.monotonic() < deadline:
                time.sleep(0.02)
            assert core.index.manifest.version == versions[-1]
        refused = publish_copy(core, workspace, checkpoint_sha256="0" * 64)
        time.sleep(0.5)  # several polls: the watcher must refuse it every time
        assert core.index.manifest.version == versions[-1] != refused
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert len(seen & set(versions)) >= 2  # searches really ran across swaps
