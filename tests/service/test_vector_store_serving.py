"""Serving from a vector store (Milvus Lite): the same answers as the FAISS path, filters pushed
down as data, Upsert/Delete written to the serving Milvus collection with the catalogue, describe
and reload following the alias, reindex into a new Milvus collection, refusals at start-up."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from indexer.catalog import ImageRow, IndexVersionRow
from service.config import ServeConfig, load_serve_config
from service.core import FailedPrecondition, ImageInput, SearchQuery, UpsertItem
from tests.service.conftest import digit, make_core

pytestmark = pytest.mark.slow
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

QUOTED = 'x" or id >= 0 or "'


def publish_into_milvus(ws: Path, uri: str, *, catalog: str | None = None) -> None:
    """The FAISS version's vectors into a new Milvus collection (no re-embedding)."""
    from imgsim.cli import main

    assert main(["store", "publish", "--vector-store", f"milvus:{uri}", "--catalog",
                 catalog or f"sqlite:///{ws / 'cat.db'}", "--index-root", str(ws / "idx")]) == 0


def store_config(ws: Path, checkpoint: Path, spec: str, **kw) -> ServeConfig:
    kw.setdefault("catalog_url", f"sqlite:///{ws / 'cat.db'}")
    return ServeConfig(checkpoint=str(checkpoint), index_root=str(ws / "idx"), vector_store=spec,
                       **kw)


@pytest.fixture(scope="module")
def ws(golden, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("milvus-serve") / "ws"
    shutil.copytree(golden, ws)
    publish_into_milvus(ws, str(ws / "milvus.db"))
    return ws


@pytest.fixture(scope="module")
def cores(ws, tiny_checkpoint):
    """(Milvus-backed core, FAISS core) over one catalogue: the FAISS one answers as before."""
    from service.server import load_core

    milvus = load_core(store_config(ws, tiny_checkpoint, f"milvus:{ws / 'milvus.db'}"))
    faiss_core = make_core(ws, tiny_checkpoint)
    yield milvus, faiss_core
    milvus.close()
    faiss_core.close()


def fresh_image(digits_dir: Path, label: str, i: int) -> bytes:
    """An image no catalogued one equals (a digit mirrored), so that only its upsert is at 0."""
    from PIL import Image, ImageOps

    from tests.service.conftest import encoded

    return encoded(ImageOps.mirror(Image.open(digit(digits_dir, label, i))), "PNG")


def keys(result) -> list[str]:
    return [h.key for h in result.hits]


def test_search_answers_as_the_faiss_path_with_filters_pushed_down(cores, digits_dir):
    milvus, faiss_core = cores
    assert milvus.live().pushes_filters and not faiss_core.live().pushes_filters
    q = ImageInput(data=digit(digits_dir, "3", 2).read_bytes())
    far = faiss_core.search(q, 10).hits[5].distance
    for where in [{}, {"labels": ("4", "7")}, {"exclude_keys": ("3/" + digit(digits_dir, "3", 2).stem,)},
                  {"max_distance": far}, {"labels": ("3",), "max_distance": far}]:
        got, want = milvus.search(q, 10, **where), faiss_core.search(q, 10, **where)
        assert keys(got) == keys(want), where
        np.testing.assert_allclose([h.distance for h in got.hits],
                                   [h.distance for h in want.hits], rtol=1e-4, atol=1e-4)
    assert all(h.label in ("4", "7") for h in milvus.search(q, 10, labels=("4", "7")).hits)
    assert len(milvus.search(q, 10, max_distance=far).hits) == 6
    # catalogued keys as queries and identities read their vectors from the store
    key = "3/" + digit(digits_dir, "3", 2).stem
    assert keys(milvus.search(ImageInput(key=key), 3)) == keys(faiss_core.search(ImageInput(key=key), 3))
    got, want = milvus.verify_identity(q, "7"), faiss_core.verify_identity(q, "7")
    assert (got.nearest_key, got.enrolled_images) == (want.nearest_key, want.enrolled_images)
    assert got.distance == pytest.approx(want.distance, abs=1e-4)
    # one batch, several filters: each query gets its own
    a, b = milvus.batch_search([SearchQuery(q, 5, labels=("1",)), SearchQuery(q, 5, labels=("2",))])
    assert {h.label for h in a.hits} == {"1"} and {h.label for h in b.hits} == {"2"}


def test_upsert_then_search_finds_it_delete_then_gone_quotes_are_data(cores, digits_dir):
    milvus, faiss_core = cores
    data = fresh_image(digits_dir, "8", 7)
    before = milvus.describe().count
    r = milvus.upsert([UpsertItem("m/quoted", data, label=QUOTED, metadata={"cam": QUOTED}),
                       UpsertItem("m/plain", fresh_image(digits_dir, "5", 1), label="5",
                                  metadata={"cam": "plain"})])
    assert (r.inserted, r.count) == (2, before + 2)
    q = ImageInput(data=data)
    assert milvus.search(q, 1).hits[0].key == "m/quoted"  # the writer reads its own write
    # a value holding quotes and operators matches exactly its own rows: it is data
    assert keys(milvus.search(q, 10, metadata={"cam": QUOTED})) == ["m/quoted"]
    assert keys(milvus.search(q, 10, labels=(QUOTED,))) == ["m/quoted"]
    assert milvus.search(q, 10, labels=('9" or label != "',)).hits == []
    # the catalogue holds the rows (the source of truth), and the FAISS version does not
    with milvus.sessions() as s:
        assert set(s.scalars(select(ImageRow.key).where(ImageRow.key.like("m/%")))) == \
            {"m/quoted", "m/plain"}
    assert "m/quoted" not in keys(faiss_core.search(q, 10))
    # the same stream again: unchanged; a new label: updated in the store's copy too
    again = milvus.upsert([UpsertItem("m/quoted", data, label=QUOTED, metadata={"cam": QUOTED})])
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 1)
    milvus.upsert([UpsertItem("m/quoted", data, label="relabelled", metadata={"cam": "y"})])
    assert milvus.search(q, 10, labels=(QUOTED,)).hits == []
    assert keys(milvus.search(q, 1, labels=("relabelled",))) == ["m/quoted"]
    d = milvus.delete(["m/quoted", "m/plain"])
    assert (d.deleted, d.count) == (2, before)
    assert "m/quoted" not in keys(milvus.search(q, 10))
    assert milvus.search(q, 10, labels=("relabelled",)).hits == []


def test_a_failed_commit_undoes_the_store_write(cores, digits_dir, monkeypatch):
    import service.mutations as mutations

    milvus, _ = cores
    data = fresh_image(digits_dir, "6", 4)
    before = milvus.describe().count

    def crash(point):
        raise RuntimeError(f"injected at {point}")

    monkeypatch.setattr(mutations, "fault_point", crash)
    with pytest.raises(RuntimeError, match="injected"):
        milvus.upsert([UpsertItem("m/crash", data, label="6")])
    monkeypatch.undo()
    assert milvus.describe().count == before
    assert "m/crash" not in keys(milvus.search(ImageInput(data=data), 10))
    with milvus.sessions() as s:
        assert s.scalar(select(ImageRow.id).where(ImageRow.key == "m/crash")) is None


def test_describe_list_and_reload_follow_the_alias(cores, ws):
    from service.browse import Catalogue

    milvus, _ = cores
    info = milvus.describe()
    assert info.factory == "milvus:FLAT" and info.recall_at_10 == pytest.approx(1.0)
    with milvus.sessions() as s:
        row = s.scalars(select(IndexVersionRow).where(IndexVersionRow.name == info.index_version)
                        ).one()
    assert row.state == "published" and row.factory == "milvus:FLAT" and row.recall_at_10 == 1.0
    listed = {c.name: c for c in Catalogue(milvus).collections()}
    assert listed["default"].index_version == info.index_version
    assert listed["default"].indexed == info.count
    # another process publishes a new version: Reload serves what the alias names now
    from indexer.stores.milvus_store import MilvusStore

    other = MilvusStore(str(ws / "milvus.db"))
    from indexer.catalog import all_images, open_catalog
    from indexer.stores import Items

    vecs, present = milvus.live().reconstruct(np.arange(1, 401))
    with open_catalog(f"sqlite:///{ws / 'cat.db'}").begin() as s:
        rows = {r.id: r for r in all_images(s)}
        ids = np.array([i for i in range(1, 401) if present[i - 1] and i in rows], np.int64)
        new = other.publish("default", Items(ids, vecs[ids - 1], [rows[int(i)].label for i in ids],
                                             [rows[int(i)].meta or {} for i in ids]),
                            session=s)
    coll, old, now = milvus.reload()
    assert (coll, old, now) == ("default", info.index_version, new.version)
    assert milvus.describe().index_version == new.version
    with pytest.raises(FailedPrecondition, match="alias"):
        milvus.reload(version=info.index_version)  # moving the alias would move every replica


def test_reindex_fills_a_new_milvus_collection_and_records_its_recall(golden, tmp_path,
                                                                       tiny_checkpoint,
                                                                       digits_dir, capsys):
    from imgsim.cli import main
    from service.server import load_core

    ws = tmp_path / "ws"
    shutil.copytree(golden, ws)
    spec = f"milvus:{ws / 'reindexed.db'}"
    assert main(["reindex", "--checkpoint", str(tiny_checkpoint), "--catalog",
                 f"sqlite:///{ws / 'cat.db'}", "--index-root", str(ws / "idx"),
                 "--vector-store", spec, "--num-workers", "0"]) == 0
    assert "recall@10=" in capsys.readouterr().out
    core = load_core(store_config(ws, tiny_checkpoint, spec))
    try:
        info = core.describe()
        with core.sessions() as s:
            row = s.scalars(select(IndexVersionRow).where(
                IndexVersionRow.name == info.index_version)).one()
            n = len(list(s.scalars(select(ImageRow.id))))
        assert row.factory.startswith("milvus:") and row.state == "published"
        assert row.recall_at_10 is not None and row.recall_at_10 >= 0.95
        assert info.recall_at_10 == row.recall_at_10 and info.count == n == row.count
        assert info.checkpoint_sha256 == core.embedder.checkpoint_sha256
        img = digit(digits_dir, "7", 3)
        assert core.search(ImageInput(data=img.read_bytes()), 1).hits[0].key == f"7/{img.stem}"
    finally:
        core.close()


def test_reindex_stages_without_the_lock_and_catches_up_with_writes_meanwhile(
        golden, tmp_path, tiny_checkpoint, digits_dir, monkeypatch):
    """Filling and indexing the new Milvus collection holds no lock: servers' writes go on
    (to the serving version) and are written into the new one at commit, under the lock, so
    the new version agrees with the catalogue: an upserted image, a deleted one, a label
    changed without new pixels."""
    import threading

    from indexer import reindex as rx
    from indexer.catalog import open_catalog
    from indexer.stores import open_vector_store
    from indexer.stores.check import check_store
    from indexer.stores.milvus_store import MilvusStore
    from indexer.versions import publish_lock
    from service.server import load_core

    ws = tmp_path / "ws"
    shutil.copytree(golden, ws)
    spec = f"milvus:{ws / 'milvus.db'}"
    publish_into_milvus(ws, str(ws / "milvus.db"))
    core = load_core(store_config(ws, tiny_checkpoint, spec))
    gone, relabel = digit(digits_dir, "2", 0), digit(digits_dir, "4", 1)
    lock_free = []
    real_stage = MilvusStore.stage

    def stage_while_serving(self, collection, items):
        staged = real_stage(self, collection, items)

        def try_lock():  # another thread, as another writer would
            try:
                with publish_lock(ws / "idx", timeout=2):
                    lock_free.append(True)
            except TimeoutError:
                lock_free.append(False)

        t = threading.Thread(target=try_lock)
        t.start()
        t.join()
        core.upsert([UpsertItem("new/7", fresh_image(digits_dir, "7", 2), "7"),
                     UpsertItem(f"4/{relabel.stem}", relabel.read_bytes(), "relabelled",
                                {"why": QUOTED})])
        core.delete([f"2/{gone.stem}"])
        return staged

    monkeypatch.setattr(MilvusStore, "stage", stage_while_serving)
    try:
        desc = rx.reindex(rx.ReindexConfig(
            checkpoint=str(tiny_checkpoint), index_root=str(ws / "idx"),
            catalog_url=f"sqlite:///{ws / 'cat.db'}", vector_store=spec, num_workers=0,
            progress=False, chunk_size=64))
        assert lock_free == [True]  # staging held no lock
        assert desc.extra["caught_up_at_commit"] == 3  # deleted, added, relabelled
        store = open_vector_store(spec)
        try:
            with open_catalog(f"sqlite:///{ws / 'cat.db'}")() as s:
                drift = check_store(s, store, "default")
            assert drift.clean and drift.unverified == 0, drift.summary()  # contents kept
            assert store.serving("default").endswith(desc.version)
        finally:
            store.close()
        hit = core.search(ImageInput(data=fresh_image(digits_dir, "7", 2)), 1).hits[0]
        assert hit.key == "new/7" and hit.distance < 1e-3
        hit = core.search(ImageInput(data=relabel.read_bytes()), 1, labels=("relabelled",))
        assert [h.key for h in hit.hits] == [f"4/{relabel.stem}"]
        assert f"2/{gone.stem}" not in keys(core.search(ImageInput(data=gone.read_bytes()), 5))
    finally:
        core.close()


def test_the_setting_comes_from_flags_env_and_toml(tmp_path):
    base = {"checkpoint": "c.pt", "index_root": "i", "catalog_url": "sqlite:///x.db"}
    assert load_serve_config(**base).vector_store == "faiss"
    assert load_serve_config(env={"IMGSIM_VECTOR_STORE": "milvus:m.db"}, **base
                             ).vector_store == "milvus:m.db"
    f = tmp_path / "serve.toml"
    f.write_text('[serve]\nvector_store = "milvus:http://db:19530"\ncollections = ["a", "b"]\n')
    cfg = load_serve_config(f, **base)
    assert (cfg.vector_store, cfg.collections) == ("milvus:http://db:19530", ("a", "b"))
    with pytest.raises(ValueError, match="faiss, milvus"):
        load_serve_config(vector_store="qdrant:x", **base)
    with pytest.raises(ValueError, match="extra_index_roots"):
        load_serve_config(vector_store="milvus:m.db", extra_index_roots=("j",), **base)


@pytest.mark.parametrize("spec, says", [("qdrant:x", "unknown vector store"),
                                        ("milvus:http://127.0.0.1:1", "cannot open Milvus"),
                                        ("milvus:/no/such/dir/m.db", "cannot open Milvus")])
def test_serve_refuses_an_invalid_or_unreachable_store_in_one_line(ws, tiny_checkpoint,
                                                                   spec, says):
    from tests.service.test_cli_errors import _imgsim

    r = _imgsim(["serve", "--checkpoint", str(tiny_checkpoint), "--catalog",
                 f"sqlite:///{ws / 'cat.db'}", "--index-root", str(ws / "idx"), "--port", "0",
                 "--http-port", "0", "--vector-store", spec], ws)
    err = [line for line in r.stderr.strip().splitlines() if "error" in line.lower()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert err and err[-1].startswith("imgsim serve: error: ") and says in err[-1], r.stderr
