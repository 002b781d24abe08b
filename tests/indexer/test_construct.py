"""Index construction: factory parsing, auto's choices, recall measurement and tuning."""

import faiss
import numpy as np
import pytest

from indexer.construct import (
    IndexingConfig,
    auto_candidates,
    index_vectors,
    make_index,
    split_for_tuning,
)
from indexer.factory import estimate_bytes, index_bytes, new_index, parse_factory, stored_ids
from indexer.tune import (
    QUANTIZER_EF_SEARCHES,
    held_out_queries,
    lower_bound,
    recall_at_k,
    recall_per_query,
    search_cost,
    search_setting,
    tune_search_params,
)


def clustered(n, d, *, clusters=50, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32) * 4
    return centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = clustered(8000, 16)
    return x, np.arange(len(x), dtype=np.int64) * 3 + 1  # ids unlike positions


@pytest.mark.parametrize("factory,family,code", [
    ("Flat", "flat", 64), ("HNSW32", "hnsw", 64), ("IVF256,Flat", "ivf", 64),
    ("IVF256,SQ8", "ivf", 16), ("IVF256,PQ8", "ivf", 8), ("IVF4096_HNSW32,PQ4x4", "ivf", 2)])
def test_parse_factory(factory, family, code):
    kind = parse_factory(factory, 16)
    assert (kind.family, kind.code_bytes) == (family, code)


@pytest.mark.parametrize("bad", ["LSH", "IVF256,PQ5", "PCA8,Flat", "", "auto"])
def test_unsupported_factories_are_refused_with_the_valid_forms(bad):
    with pytest.raises(ValueError, match="valid forms|must divide"):
        parse_factory(bad, 16)


def test_ids_are_catalogue_ids_for_every_family(data):
    x, ids = data
    for factory in ["Flat", "HNSW16", "IVF64,Flat", "IVF64,PQ8"]:
        index = make_index(factory, 16, x, ids)
        assert sorted(stored_ids(index).tolist()) == sorted(ids.tolist()), factory
        _, found = index.search(x[:5], 1)
        if "PQ" not in factory:
            assert found[:, 0].tolist() == ids[:5].tolist(), factory


def test_size_estimates_track_real_index_sizes(data):
    x, ids = data
    for factory in ["Flat", "HNSW32", "IVF64,Flat", "IVF64,PQ8", "IVF64,SQ8"]:
        est = estimate_bytes(parse_factory(factory, 16), 16, len(x))
        real = index_bytes(make_index(factory, 16, x, ids))
        assert 0.5 < est / real < 2.5, (factory, est, real)


def test_recall_is_the_fraction_of_true_neighbours_found():
    x = clustered(2000, 8)
    ids = np.arange(2000, dtype=np.int64)
    queries = clustered(50, 8, seed=1)
    held = held_out_queries(x, ids, queries, k=10)
    exact = new_index("Flat", 8)
    exact.add_with_ids(x, ids)
    assert recall_at_k(exact, held) == 1.0
    # an index missing the true top-1 of every query finds exactly 9 of 10
    top1 = set(held.truth[:, 0].tolist())
    keep = np.array([i not in top1 for i in ids])
    partial = new_index("Flat", 8)
    partial.add_with_ids(x[keep], ids[keep])
    missing = np.isin(held.truth, ids[~keep]).sum(axis=1)
    assert recall_at_k(partial, held) == pytest.approx(1 - missing.mean() / 10)


def test_auto_tunes_on_vectors_it_holds_out_then_adds_them(data):
    x, ids = data
    base, q = split_for_tuning(len(x), 500, np.random.default_rng(0))
    assert len(q) == 500 and not set(base) & set(q) and len(base) + len(q) == len(x)
    assert len(split_for_tuning(300, 500, np.random.default_rng(0))[1]) == 30  # at most a tenth
    built = index_vectors(x, ids, IndexingConfig(factory="HNSW16", tuning_queries=300))
    assert built.index.ntotal == len(x)
    assert sorted(stored_ids(built.index).tolist()) == sorted(ids.tolist())


def test_tuning_finds_the_smallest_nprobe_reaching_the_target_with_confidence(data):
    x, ids = data
    index = make_index("IVF64,Flat", 16, x, ids)
    held = held_out_queries(x, ids, clustered(300, 16, seed=7), k=10)
    kind = parse_factory("IVF64,Flat", 16)
    tuned = tune_search_params(index, kind, held, target_recall=0.95)
    nprobe = tuned.params["nprobe"]
    assert faiss.extract_index_ivf(index).nprobe == nprobe  # left set on the index
    per_query = recall_per_query(index, held, params={"nprobe": nprobe})
    assert tuned.met_target and tuned.recall == pytest.approx(per_query.mean())
    # the lower confidence bound reaches the target, so the mean clears it with a margin
    assert lower_bound(per_query) >= 0.95 and tuned.recall > lower_bound(per_query)
    if nprobe <= 10:  # below 10 the bisection is exact
        assert lower_bound(recall_per_query(index, held, params={"nprobe": nprobe - 1})) < 0.95


def test_lower_bound_is_the_mean_minus_two_standard_errors():
    per_query = np.array([1.0, 0.9, 0.8, 1.0])
    se = per_query.std(ddof=1) / 2
    assert lower_bound(per_query) == pytest.approx(per_query.mean() - 1.96 * se)
    assert lower_bound(np.ones(50)) == 1.0


def test_an_hnsw_coarse_quantiser_searches_wider_with_nprobe():
    kind = parse_factory("IVF4096_HNSW32,Flat", 16)
    assert kind.coarse_hnsw and not parse_factory("IVF4096,Flat", 16).coarse_hnsw
    assert search_setting(kind, 4) == {"nprobe": 4, "quantizer_efSearch": 64}
    assert search_setting(kind, 4, 16) == {"nprobe": 4, "quantizer_efSearch": 16}
    assert search_setting(kind, 100, 16) == {"nprobe": 100, "quantizer_efSearch": 100}


def test_with_an_hnsw_coarse_quantiser_the_cheapest_setting_reaching_the_target_wins(data):
    x, ids = data
    factory = "IVF256_HNSW32,Flat"
    kind = parse_factory(factory, 16)
    index = make_index(factory, 16, x, ids)
    held = held_out_queries(x, ids, clustered(300, 16, seed=7), k=10)
    tuned = tune_search_params(index, kind, held, target_recall=0.9)
    assert tuned.met_target
    cost = search_cost(kind, tuned.params, index.ntotal)
    for ef in QUANTIZER_EF_SEARCHES:  # no setting that reaches the target is cheaper
        for nprobe in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
            params = search_setting(kind, nprobe, ef)
            if search_cost(kind, params, index.ntotal) < cost:
                per_query = recall_per_query(index, held, params=params)
                assert lower_bound(per_query) < 0.9, params


def test_unreachable_target_reports_the_best_measured_recall(data):
    x, ids = data
    cfg = IndexingConfig(factory="IVF64,PQ2", target_recall=0.999, tuning_queries=200)
    built = index_vectors(x, ids, cfg)
    assert not built.met_target and built.recall < 0.999
    # the most accurate setting tried is kept (more probes can lose recall with coarse codes)
    held = held_out_queries(x, ids, clustered(200, 16, seed=7), k=10)
    best = recall_at_k(built.index, held)
    for nprobe in (1, 2, 8, 64):
        assert recall_at_k(built.index, held, params={"nprobe": nprobe}) <= best + 0.01


def test_auto_candidates_follow_size_and_memory_budget():
    cfg = IndexingConfig()
    assert auto_candidates(1000, 128, cfg) == ["Flat"]
    # sqrt(n), 4 sqrt(n), 8 sqrt(n) lists (powers of 2, at most n / 39 so each trains)
    assert auto_candidates(50_000, 128, cfg) == [
        "Flat", "IVF256,Flat", "IVF1024,Flat", "IVF1282,Flat", "HNSW32"]
    big = auto_candidates(1_000_000, 128, cfg)
    # no Flat (slow) and no HNSW (build time) at 1M; HNSW coarse quantiser from 2048 lists
    assert big == ["IVF1024,Flat", "IVF4096_HNSW32,Flat", "IVF8192_HNSW32,Flat"]
    tight = auto_candidates(1_000_000, 128, IndexingConfig(memory_budget_mb=100))
    assert len(tight) == 3 and all("PQ" in f for f in tight)
    for f in tight:
        assert estimate_bytes(parse_factory(f, 128), 128, 1_000_000) <= 100 * 2**20
    with pytest.raises(ValueError, match="memory budget"):
        auto_candidates(1_000_000, 128, IndexingConfig(memory_budget_mb=5))


def test_auto_builds_the_fastest_candidate_that_reaches_the_target(data):
    x, ids = data
    cfg = IndexingConfig(target_recall=0.9, tuning_queries=200, flat_below=1000)
    built = index_vectors(x, ids, cfg)
    tried = {c["factory"]: c for c in built.candidates}
    assert set(tried) == set(auto_candidates(len(x), 16, cfg))
    assert built.met_target and built.recall >= 0.9
    reaching = [c for c in tried.values() if c["recall"] >= 0.9]
    assert tried[built.factory]["qps_single"] == max(c["qps_single"] for c in reaching)
    assert built.index.ntotal == len(x)
