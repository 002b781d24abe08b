"""Vector stores: one contract over every backend (FAISS, Milvus Lite), Milvus's alias publish,
filters built safely from hostile values, and drift repair between catalogue and store."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.stores import (
    VECTOR_STORES,
    Items,
    StoreFilter,
    StoreQuery,
    VectorStore,
    open_vector_store,
    parse_store_spec,
)

HOSTILE = ['x" or id > 0 or "', 'a\\" or \\"', "back\\slash", "it's", "new\nline",
           "label == \"0\"", "]) or (id >= 0"]
LABELS = ["0", "1", "2"] + HOSTILE
N, D = 400, 16


def _data(seed: int = 0) -> Items:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, D))
    x = (centres[rng.integers(0, 8, N)] + 0.4 * rng.standard_normal((N, D))).astype(np.float32)
    ids = np.arange(N, dtype=np.int64) * 3 + 7  # catalogue ids, not row numbers
    labels = [LABELS[i % len(LABELS)] for i in range(N)]
    meta = [{"shard": HOSTILE[i % len(HOSTILE)] if i % 2 else "plain", "n": str(i % 4)}
            for i in range(N)]
    return Items(ids, x, labels, meta)


def _exact(items: Items, q: np.ndarray, k: int, keep: np.ndarray | None = None):
    d = ((items.vectors - q[None]) ** 2).sum(1)
    if keep is not None:
        d = np.where(keep, d, np.inf)
    order = np.argsort(d, kind="stable")[:k]
    order = order[np.isfinite(d[order])]
    return items.ids[order], d[order]


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    return str(tmp_path_factory.mktemp("milvus") / "store.db")


@pytest.fixture(scope="module", params=sorted(VECTOR_STORES))
def store(request, tmp_path_factory, milvus_uri):
    """Each backend once per module (Milvus Lite starts a local server process)."""
    if request.param == "faiss":
        s = open_vector_store("faiss", index_root=tmp_path_factory.mktemp("faiss"))
    else:
        from indexer.stores.milvus_store import MilvusIndexConfig

        # HNSW from 100 vectors, so that the tuned path is the one tested
        s = open_vector_store(f"milvus:{milvus_uri}", index=MilvusIndexConfig(flat_below=100))
    items = _data()
    s.publish("c", items)
    yield s, items
    s.close()


def test_registry_names_every_backend_and_refuses_others():
    assert parse_store_spec("faiss") == ("faiss", "")
    assert parse_store_spec("") == ("faiss", "")
    assert parse_store_spec("milvus:http://db:19530") == ("milvus", "http://db:19530")
    assert parse_store_spec("milvus:var/m.db") == ("milvus", "var/m.db")
    with pytest.raises(ValueError, match="faiss, milvus"):
        parse_store_spec("qdrant:x")
    with pytest.raises(ValueError, match="milvus needs a file"):
        open_vector_store("milvus")


def test_filter_expression_quotes_values_as_data():
    from indexer.stores.milvus_store import filter_expression, string_literal

    assert string_literal('x" or id > 0 or "') == r'"x\" or id > 0 or \""'
    assert string_literal("a\\b") == r'"a\\b"'
    e = filter_expression(StoreFilter(labels=("a",), metadata={'k"': "v"}, excluded_ids=(3, 4)))
    assert e == r'(label in ["a"]) and (meta["k\""] == "v") and (id not in [3, 4])'
    assert filter_expression(StoreFilter()) == ""
    with pytest.raises(ValueError, match="control character"):
        string_literal("bell\x07")


def test_unfiltered_search_finds_the_exact_neighbours(store):
    s, items = store
    assert isinstance(s, VectorStore)
    desc = s.describe("c")
    assert desc.count == N and desc.dimension == D and desc.recall_at_10 is not None
    assert desc.recall_at_10 >= 0.95
    qs = [StoreQuery(items.vectors[i] + 0.01, 10) for i in range(0, N, 40)]
    for q, hits in zip(qs, s.search("c", qs), strict=True):
        want, dist = _exact(items, q.vector, 10)
        assert len(set(hits.ids.tolist()) & set(want.tolist())) >= 9
        assert hits.ids[0] == want[0]
        np.testing.assert_allclose(hits.distances[0], dist[0], rtol=1e-3, atol=1e-4)
        assert np.all(np.diff(hits.distances) >= -1e-5) and hits.version == desc.version
    # one batch with different k per query: each gets its own k, the same hits as alone
    mixed = [StoreQuery(q.vector, k) for q, k in zip(qs, [1, 3, 10, 7] * len(qs), strict=False)]
    for q, hits in zip(mixed, s.search("c", mixed), strict=True):
        alone = s.search("c", [q])[0]
        assert len(hits.ids) == q.k
        np.testing.assert_array_equal(hits.ids, alone.ids)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_label_and_metadata_match_only_their_own_rows(store, value):
    s, items = store
    q = items.vectors[5]
    labels = np.array(items.labels)
    for where, keep in [
        (StoreFilter(labels=(value,)), labels == value),
        (StoreFilter(metadata={"shard": value}),
         np.array([m["shard"] == value for m in items.metadata])),
        (StoreFilter(labels=(value, "0"), metadata={"n": "1"}),
         np.isin(labels, [value, "0"]) & np.array([m["n"] == "1" for m in items.metadata])),
    ]:
        hits = s.search("c", [StoreQuery(q, 20, where)])[0]
        want, _ = _exact(items, q, 20, keep)
        assert keep.sum() < N / 2  # the filter restricts: an injected "or" would not
        assert sorted(hits.ids.tolist()) == sorted(want.tolist()), where


def test_excluded_ids_and_max_distance(store):
    s, items = store
    q = items.vectors[0]
    want, dist = _exact(items, q, 10)
    excluded = tuple(int(i) for i in want[:3])
    hits = s.search("c", [StoreQuery(q, 5, StoreFilter(excluded_ids=excluded))])[0]
    assert not set(hits.ids.tolist()) & set(excluded)
    assert hits.ids[0] == want[3]
    limit = float(np.sqrt(dist[4])) + 1e-4  # L2, not squared: five hits within it
    hits = s.search("c", [StoreQuery(q, 10, StoreFilter(max_distance=limit))])[0]
    assert hits.ids.tolist() == want[:5].tolist()
    empty = s.search("c", [StoreQuery(q, 10, StoreFilter(labels=("no such label",)))])[0]
    assert len(empty.ids) == 0


def test_add_replaces_by_id_and_remove_deletes_read_your_writes(store):
    s, items = store
    new_id = 10_000
    far = np.full(D, 50.0, np.float32)
    s.add("c", Items(np.array([new_id]), far[None], ["new"], [{"n": "9"}]))
    hits = s.search("c", [StoreQuery(far, 1)])[0]  # the writer's next read sees the write
    assert hits.ids.tolist() == [new_id]
    moved = far + 100
    s.add("c", Items(np.array([new_id]), moved[None], ["new"], [{"n": "9"}]))  # same id
    hits = s.search("c", [StoreQuery(moved, 2)])[0]
    assert hits.ids[0] == new_id and new_id not in hits.ids[1:]
    assert s.search("c", [StoreQuery(far, 1, StoreFilter(labels=("new",)))])[0].ids[0] == new_id
    assert s.remove("c", [new_id, 999_999]) == 1
    assert new_id not in s.search("c", [StoreQuery(moved, 5)])[0].ids
    assert new_id not in s.stored_ids("c")
    assert len(s.stored_ids("c")) == N


def test_milvus_publish_moves_the_alias_and_records_the_version(milvus_uri, tmp_path):
    from pymilvus import MilvusClient

    from indexer.catalog import index_versions, open_catalog
    from indexer.stores.milvus_store import MilvusStore, alias_of

    store = MilvusStore(milvus_uri)
    sessions = open_catalog(f"sqlite:///{tmp_path}/cat.db")
    a, b = _data(0), _data(1)
    with sessions.begin() as s:
        first = store.publish("blue/green", a, session=s)
    assert first.index_type == "FLAT" and first.recall_at_10 == 1.0  # 400 < flat_below
    q = StoreQuery(b.vectors[0], 1)
    assert store.search("blue/green", [q])[0].ids[0] != b.ids[0] or \
        np.allclose(a.vectors[0], b.vectors[0])
    with sessions.begin() as s:
        second = store.publish("blue/green", b, session=s, keep=1)
    hits = store.search("blue/green", [q])[0]
    assert hits.ids[0] == b.ids[0] and hits.version == second.version
    client = MilvusClient(milvus_uri)
    assert client.describe_alias(alias_of("blue/green"))["collection_name"].endswith(
        second.version)
    assert store.versions("blue/green") == [f"{alias_of('blue/green')}__{second.version}"]
    with sessions() as s:
        rows = index_versions(s, collection="blue/green")
    assert [(r.name, r.state) for r in rows] == [(first.version, "retired"),
                                                 (second.version, "published")]
    assert rows[1].factory == "milvus:FLAT" and rows[1].recall_at_10 == 1.0
    assert rows[1].count == N and rows[1].path.endswith(second.version)
    store.close()


def test_milvus_publish_survives_a_create_index_resent_after_it_built(milvus_uri):
    """A 1M-row HNSW build outlived its gRPC connection; pymilvus resent create_index and the
    resend failed with "index already exists", killing a publish whose index was built."""
    from pymilvus.exceptions import MilvusException

    from indexer.stores.milvus_store import MilvusIndexConfig, MilvusStore

    store = MilvusStore(milvus_uri, index=MilvusIndexConfig(flat_below=100))
    real = store.client.create_index
    calls = []

    def build_then_fail_like_the_resend(name, params, **kw):
        calls.append(name)
        real(name, params, **kw)
        raise MilvusException(code=35, message="index already exists for field 'vector'; "
                                               "call drop_index first")

    store.client.create_index = build_then_fail_like_the_resend
    items = _data(2)
    desc = store.publish("resent", items)
    assert calls and desc.index_type == "HNSW" and desc.recall_at_10 >= 0.9
    hits = store.search("resent", [StoreQuery(items.vectors[5], 1)])[0]
    assert hits.ids[0] == items.ids[5]

    def fail_without_building(name, params, **kw):  # a real error still stops the publish
        raise MilvusException(code=1100, message="invalid index params")

    store.client.create_index = fail_without_building
    with pytest.raises(MilvusException, match="invalid index params"):
        store.publish("resent", _data(3))
    assert store.search("resent", [StoreQuery(items.vectors[5], 1)])[0].ids[0] == items.ids[5]
    store.close()


def test_store_check_reports_and_repairs_drift(milvus_uri, tmp_path):
    from indexer.catalog import ImageRow, open_catalog, upsert_images
    from indexer.stores.check import check_store, repair_store
    from indexer.stores.milvus_store import MilvusStore

    store = MilvusStore(milvus_uri)
    sessions = open_catalog(f"sqlite:///{tmp_path}/cat.db")
    with sessions.begin() as s:
        rows = upsert_images(s, [{"key": f"k{i}", "path": f"/x/{i}.png", "label": str(i % 3),
                                  "sha256": f"{i:064x}", "meta": {"n": str(i)}}
                                 for i in range(30)], collection="drift")
        ids = np.array([r.id for r in rows], np.int64)
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((30, D)).astype(np.float32)
    store.publish("drift", Items(ids, vecs, [str(i % 3) for i in range(30)],
                                 [{"n": str(i)} for i in range(30)],
                                 [f"{i:064x}" for i in range(30)]))
    with sessions.begin() as s:
        assert check_store(s, store, "drift").clean
        victim = s.get(ImageRow, int(ids[0]))
        victim.label = 'renamed " label'  # catalogue changed, store not
        s.delete(s.get(ImageRow, int(ids[1])))  # deleted from the catalogue only
        s.get(ImageRow, int(ids[3])).sha256 = "f" * 64  # new pixels, the store has the old
    store.remove("drift", [int(ids[2])])  # lost from the store only
    new_pixels = rng.standard_normal(D).astype(np.float32)
    with sessions.begin() as s:
        drift = check_store(s, store, "drift")
        assert (drift.missing, drift.extra, drift.stale, drift.replaced) == \
            ([ids[2]], [ids[1]], [ids[0]], [ids[3]])
        assert "replaced 1" in drift.summary() and drift.unverified == 0
        left = repair_store(s, store, drift)
        assert left.missing == [ids[2]] and left.replaced == [ids[3]]  # need vectors
        assert not left.extra and not left.stale
        left = repair_store(s, store, left, embed=lambda rs: np.stack(
            [new_pixels if r.sha256 == "f" * 64 else vecs[2] for r in rs]))
        assert left.clean
        assert check_store(s, store, "drift").clean
    assert store.search("drift", [StoreQuery(new_pixels, 1)])[0].ids.tolist() == [ids[3]]
    store.add("drift", Items(ids[4:5], vecs[4:5], ["1"], [{"n": "4"}]))  # no content given
    with sessions.begin() as s:
        drift = check_store(s, store, "drift")
    assert drift.clean and drift.unverified == 1 and "1 stored without a content hash" in \
        drift.summary()
    hit = store.search("drift", [StoreQuery(vecs[0], 1,
                                            StoreFilter(labels=('renamed " label',)))])[0]
    assert hit.ids.tolist() == [ids[0]]
    store.close()


def test_cli_publishes_a_faiss_version_into_milvus_and_checks_it(milvus_uri, tmp_path, capsys):
    from imgsim.cli import main
    from indexer.catalog import ImageRow, open_catalog, upsert_images
    from indexer.stores.faiss_store import FaissStore

    url, root = f"sqlite:///{tmp_path}/cat.db", tmp_path / "index"
    sessions = open_catalog(url)
    items = _data(2)
    with sessions.begin() as s:
        rows = upsert_images(s, [{"key": f"k{i}", "path": f"/x/{i}.png", "label": lab,
                                  "sha256": f"{i:064x}", "meta": m}
                                 for i, (lab, m) in enumerate(zip(items.labels, items.metadata,
                                                                  strict=True))])
        items = Items(np.array([r.id for r in rows]), items.vectors, items.labels,
                      items.metadata)
        FaissStore(root).publish("default", items, session=s)
    store = ["--vector-store", f"milvus:{milvus_uri}", "--catalog", url]
    assert main(["store", "publish", *store, "--index-root", str(root)]) == 0
    assert f"count={N}" in capsys.readouterr().out
    assert main(["store", "check", *store, "--collection", "default"]) == 0
    assert "missing 0, extra 0, stale 0" in capsys.readouterr().out
    with sessions.begin() as s:
        s.delete(s.get(ImageRow, int(items.ids[0])))
    assert main(["store", "check", *store, "--collection", "default"]) == 1
    assert "extra 1" in capsys.readouterr().out
    assert main(["store", "check", *store, "--collection", "default", "--repair"]) == 0
    assert main(["store", "check", *store]) == 0  # every collection
    # the FAISS backend checks against the same catalogue: its version still holds the id
    assert main(["store", "check", "--catalog", url, "--index-root", str(root),
                 "--collection", "default"]) == 1


REPLICA = """
import sys
import numpy as np
from indexer.stores import StoreQuery, open_vector_store
b = open_vector_store("milvus:http://" + sys.argv[1], read_consistency="Bounded")
probe = np.full(16, 9.0, np.float32)
for line in sys.stdin:  # one search per line from the writer
    hits = b.search("replicas", [StoreQuery(probe, 1)])[0]
    print(hits.ids.tolist(), hits.version, flush=True)
"""


def test_a_second_process_sees_the_writers_changes_and_publish(milvus_uri):
    """Two replicas on loopback: the process that opened Milvus Lite serves it on a local port,
    and another process reads through that port (Milvus Lite's limit: one host, and the
    first process must stay up; a Milvus server lifts both)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from indexer.stores.milvus_store import MilvusStore

    a = MilvusStore(milvus_uri)
    a.publish("replicas", _data(4))
    address = a.client._get_connection()._address  # Milvus Lite's loopback server
    repo = Path(__file__).resolve().parents[2]
    b = subprocess.Popen([sys.executable, "-c", REPLICA, address], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=repo,
                         env={**os.environ, "PYTHONPATH": str(repo)})

    def read_in_b() -> str:
        b.stdin.write("search\n")
        b.stdin.flush()
        return b.stdout.readline().strip()

    try:
        assert not read_in_b().startswith("[10000]")
        a.add("replicas", Items(np.array([10_000]), np.full((1, D), 9.0, np.float32)))
        assert read_in_b().startswith("[10000]")  # B's next read, Bounded, sees A's upsert
        a.remove("replicas", [10_000])
        assert not read_in_b().startswith("[10000]")
        new = a.publish("replicas", _data(5))  # the alias moves under B
        import time

        time.sleep(1.1)  # B reports the serving version at most describe_ttl (1 s) late
        assert read_in_b().endswith(new.version)
    finally:
        b.stdin.close()
        b.wait(timeout=30)
        a.close()


def test_store_commands_parse_without_torch_faiss_or_pymilvus():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\nfrom imgsim.cli import main\n"
            "try:\n    main(['store', 'check', '--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'faiss', 'pymilvus') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_query_of_the_wrong_size_is_a_clear_error(tmp_path):
    """The FAISS backend's single-query fast path calls FAISS's C++ search itself; a bad query
    still gets the explained error, and every query the fast path must not take (another
    dtype, a strided view, a numpy k, a tombstoned index) gets the same hits through FAISS's
    wrapper as a contiguous float32 row gets through the fast path."""
    s = open_vector_store("faiss", index_root=tmp_path)
    items = _data()
    s.publish("c", items)
    with pytest.raises(ValueError, match=f"queries must be \\(n, {D}\\), got \\(1, {D + 1}\\)"):
        s.search("c", [StoreQuery(np.zeros(D + 1, np.float32), 3)])
    with pytest.raises(ValueError, match=f"queries must be \\(n, {D}\\), got \\(1, {D - 1}\\)"):
        s.search("c", [StoreQuery(np.zeros(D - 1, np.float32), 3)])  # would read past the row
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        s.search("c", [StoreQuery(items.vectors[0], 0)])
    assert s.search("c", [StoreQuery(items.vectors[0], 1)])[0].ids[0] == items.ids[0]
    q = items.vectors[5] + 0.01
    want = s.search("c", [StoreQuery(q, 10)])[0]
    wide = np.zeros((D, 2), np.float32)
    wide[:, 0] = q
    for other in (StoreQuery(q.astype(np.float64), 10), StoreQuery(wide[:, 0], 10),
                  StoreQuery(q.astype(">f4"), 10), StoreQuery(q, np.int64(10))):
        got = s.search("c", [other])[0]
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.distances, want.distances, rtol=1e-5)
    s.remove("c", [int(want.ids[0])])  # tombstoned: the wrapper with its id selector
    after = s.search("c", [StoreQuery(q, 10)])[0]
    assert int(want.ids[0]) not in after.ids.tolist()
    np.testing.assert_array_equal(after.ids[:9], want.ids[1:])
