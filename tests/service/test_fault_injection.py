"""A process killed between publishing an index version and committing its catalogue change
(``IMGSIM_FAULT_INJECT=after-index-publish``) loses nothing: after a restart, catalogue and
served index agree, and the interrupted change is absent whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from sqlalchemy import select

from indexer.catalog import ImageRow, index_versions, open_catalog
from indexer.faults import AFTER_INDEX_PUBLISH, FAULT_ENV
from indexer.rebuild import stored_vectors
from indexer.reindex import ReindexConfig, reindex
from indexer.versions import current_version_name, load_index_version
from service.config import ServeConfig
from service.server import load_core
from training.models.embedder import Embedder

REPO = Path(__file__).resolve().parents[2]


def run_killed(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the fault point set."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          env={**os.environ, FAULT_ENV: AFTER_INDEX_PUBLISH,
                               "OMP_WAIT_POLICY": "PASSIVE", **env},
                          capture_output=True, text=True, timeout=300)


def catalogue(ws: Path) -> dict[int, tuple[str, str]]:
    """{id: (key, sha256)} of the default collection."""
    with open_catalog(f"sqlite:///{ws / 'cat.db'}")() as s:
        return {r.id: (r.key, r.sha256) for r in s.scalars(
            select(ImageRow).where(ImageRow.collection == "default"))}


def indexed_ids(ws: Path) -> set[int]:
    return set(stored_vectors(load_index_version(ws / "idx").index)[1].tolist())


def restart(ws: Path, checkpoint: Path):
    return load_core(ServeConfig(checkpoint=str(checkpoint), index_root=str(ws / "idx"),
                                 catalog_url=f"sqlite:///{ws / 'cat.db'}", watch_seconds=0))


def assert_agree(ws: Path, core, checkpoint: Path) -> None:
    """Same ids in catalogue and served index, and each vector is its catalogued image's."""
    cat = catalogue(ws)
    v = core.lives["default"].version
    vectors, ids = stored_vectors(v.index)
    assert set(ids.tolist()) == set(cat) and v.index.ntotal == len(cat)
    with open_catalog(f"sqlite:///{ws / 'cat.db'}")() as s:
        paths = dict(s.execute(select(ImageRow.id, ImageRow.path)).all())
    emb = Embedder.from_checkpoint(checkpoint)
    order = np.argsort(ids)
    want = emb.embed_paths([paths[int(i)] for i in ids[order]])
    np.testing.assert_allclose(vectors[order], want, atol=1e-4)


UPSERT = """
    from pathlib import Path
    from indexer.catalog import open_catalog
    from indexer.versions import load_index_version
    from service.core import SimilarityCore, UpsertItem
    from training.models.embedder import Embedder
    ws, digits = Path({ws!r}), Path({digits!r})
    core = SimilarityCore(Embedder.from_checkpoint({ckpt!r}), load_index_version(ws / "idx"),
                          open_catalog(f"sqlite:///{{ws / 'cat.db'}}"))
    items = [UpsertItem(key=f"new-{{i}}", data=p.read_bytes(), label="x")
             for i, p in enumerate(sorted((digits / "3").iterdir())[:3])]
    items.append(UpsertItem(key={update!r}, data=sorted((digits / "9").iterdir())[0].read_bytes()))
    core.upsert(items)
    print("survived")
"""

DELETE = """
    from pathlib import Path
    from indexer.catalog import open_catalog
    from indexer.versions import load_index_version
    from service.core import SimilarityCore
    from training.models.embedder import Embedder
    ws = Path({ws!r})
    core = SimilarityCore(Embedder.from_checkpoint({ckpt!r}), load_index_version(ws / "idx"),
                          open_catalog(f"sqlite:///{{ws / 'cat.db'}}"))
    core.delete({keys!r})
    print("survived")
"""


def test_fault_point_fires_only_where_named():
    code = "from indexer.faults import fault_point; fault_point('elsewhere'); print('alive')"
    assert run_killed(code).stdout.strip() == "alive"
    code = f"from indexer.faults import fault_point; fault_point({AFTER_INDEX_PUBLISH!r})"
    assert run_killed(code).returncode == -signal.SIGKILL


def test_upsert_killed_after_publish_loses_nothing(workspace, tiny_checkpoint, digits_dir):
    before = catalogue(workspace)
    update = before[min(before)][0]  # an image already catalogued, replaced by another
    r = run_killed(UPSERT.format(ws=str(workspace), digits=str(digits_dir),
                                 ckpt=str(tiny_checkpoint), update=update))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    # the kill landed in the window: CURRENT holds vectors the catalogue never committed
    assert catalogue(workspace) == before
    assert indexed_ids(workspace) != set(before)
    core = restart(workspace, tiny_checkpoint)
    try:
        assert catalogue(workspace) == before  # the stream is absent whole
        assert_agree(workspace, core, tiny_checkpoint)  # the update's vector too
        assert current_version_name(workspace / "idx") == core.lives["default"].version.manifest.version
    finally:
        core.close()
    core = restart(workspace, tiny_checkpoint)  # a second restart has nothing to repair
    try:
        assert_agree(workspace, core, tiny_checkpoint)
    finally:
        core.close()


def test_delete_killed_after_publish_loses_nothing(workspace, tiny_checkpoint):
    before = catalogue(workspace)
    keys = [before[i][0] for i in sorted(before)[:2]]
    r = run_killed(DELETE.format(ws=str(workspace), ckpt=str(tiny_checkpoint), keys=keys))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert indexed_ids(workspace) == set(before) - set(sorted(before)[:2])
    core = restart(workspace, tiny_checkpoint)
    try:
        assert catalogue(workspace) == before
        assert_agree(workspace, core, tiny_checkpoint)
    finally:
        core.close()


REINDEX = """
    from indexer.reindex import ReindexConfig, reindex
    reindex(ReindexConfig(checkpoint={ckpt!r}, catalog_url={url!r}, index_root={root!r},
                          chunk_size=64, num_workers=0, progress=False, tuning_queries=50))
    print("survived")
"""


def test_reindex_killed_after_publish_agrees_and_resumes(workspace, tiny_checkpoint):
    url, root = f"sqlite:///{workspace / 'cat.db'}", str(workspace / "idx")
    before = catalogue(workspace)
    r = run_killed(REINDEX.format(ckpt=str(tiny_checkpoint), url=url, root=root))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    published = current_version_name(root)
    assert indexed_ids(workspace) == set(before)  # caught up under the lock: agrees already
    with open_catalog(url)() as s:
        assert published not in {v.name for v in index_versions(s, collection="default")}
    path = reindex(ReindexConfig(checkpoint=str(tiny_checkpoint), catalog_url=url,
                                 index_root=root, chunk_size=64, num_workers=0, progress=False,
                                 tuning_queries=50))
    assert current_version_name(root) == path.name != published
    with open_catalog(url)() as s:  # the rerun completed and recorded its version
        assert path.name in {v.name for v in index_versions(s, collection="default")}
    assert not (Path(root) / "reindex").exists() or not any((Path(root) / "reindex").iterdir())
    core = restart(workspace, tiny_checkpoint)
    try:
        assert catalogue(workspace) == before
        assert_agree(workspace, core, tiny_checkpoint)
    finally:
        core.close()
