"""Vector store benchmark (issue 15): raw FAISS vs our FAISS backend vs Milvus Lite, one run.

The same vectors go through :mod:`indexer.stores` (publish, search, add, remove) on each
backend, and the FAISS backend's own index is also searched raw (``index.search``), so that
the backend's overhead is measured on the very same index. Prints a markdown table: recall@10
against exact search on held-out queries, single-query and batched q/s, filtered q/s (one label
of 10), insert rate, publish time (build + tune + the switch: CURRENT for FAISS, the alias for
Milvus), memory, and the read-your-writes latency at each Milvus consistency level.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/vector_store_bench.py --n 100000 --dim 128

Single queries run on 1 FAISS thread (one query per server thread), batches of 64 on 2.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before OpenMP is loaded by faiss

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.construct import IndexingConfig  # noqa: E402
from indexer.factory import index_bytes  # noqa: E402
from indexer.stores import Items, StoreFilter, StoreQuery, open_vector_store  # noqa: E402
from indexer.stores.milvus_store import MilvusIndexConfig  # noqa: E402
from indexer.tune import exact_neighbours, faiss_threads  # noqa: E402

log = logging.getLogger("vector_store_bench")
K = 10


def clustered(n: int, d: int, clusters: int, rng: np.random.Generator,
              centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters (as benchmarks/index_bench.py): noise 0.5 around N(0, 1) centres."""
    if centres is None:
        centres = rng.standard_normal((clusters, d)).astype(np.float32)
    out = centres[rng.integers(0, len(centres), n)].astype(np.float32)
    out += rng.standard_normal((n, d), dtype=np.float32) * 0.5
    return out, centres


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[:K], t)) / K for f, t in zip(found, truth,
                                                                           strict=True)]))


def timed_rate(fn, n: int, *, min_seconds: float) -> float:
    """Calls per second of ``fn(i)`` for i = 0.., at least ``min_seconds`` (and once over n)."""
    t0, i = time.perf_counter(), 0
    while True:
        fn(i % n)
        i += 1
        elapsed = time.perf_counter() - t0
        if i >= n and elapsed >= min_seconds:
            return i / elapsed


def guard_memory(limit_gb: float) -> None:
    """Exit (status 3) as soon as this process's RSS passes ``limit_gb``, with the phase."""
    import threading

    def watch() -> None:
        me = psutil.Process()
        while True:
            rss = me.memory_info().rss / 2**30
            if rss > limit_gb:
                log.error("RSS %.1f GB > %.1f GB during %s: stopping", rss, limit_gb, PHASE[0])
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


PHASE = ["start"]


def phase(name: str) -> None:
    PHASE[0] = name
    log.info("phase: %s (RSS %.0f MB)", name, psutil.Process().memory_info().rss / 2**20)


def child_rss_mb() -> float:
    """RSS of this process's children (Milvus Lite runs its server as one)."""
    return sum(c.memory_info().rss for c in psutil.Process().children(recursive=True)) / 2**20


def bench_store(name: str, store, collection: str, items: Items, xq: np.ndarray,
                truth: np.ndarray, labels: np.ndarray, args) -> dict:
    row: dict = {"backend": name}
    rss0 = psutil.Process().memory_info().rss / 2**20
    child0 = child_rss_mb()
    phase(f"{name}: publish")
    t0 = time.perf_counter()
    desc = store.publish(collection, items)
    row["publish_s"] = time.perf_counter() - t0
    row["index"] = f"{desc.index_type} {json.dumps(desc.search_params)}"
    row["tuned_recall"] = desc.recall_at_10
    row["switch_s"] = desc.extra.get("alias_switch_seconds")
    row["rss_mb"] = psutil.Process().memory_info().rss / 2**20 - rss0 + child_rss_mb() - child0
    qs = [StoreQuery(v, K) for v in xq]
    phase(f"{name}: single queries")
    with faiss_threads(1):
        found = [store.search(collection, [q])[0].ids for q in qs]
        row["recall@10"] = recall(found, truth)
        row["single_qps"] = timed_rate(lambda i: store.search(collection, [qs[i]]), len(qs),
                                       min_seconds=args.min_seconds)
        phase(f"{name}: filtered queries")
        fq = [StoreQuery(v, K, StoreFilter(labels=(str(i % 10),))) for i, v in enumerate(xq)]
        row["filtered_qps"] = timed_rate(lambda i: store.search(collection, [fq[i]]), len(fq),
                                         min_seconds=args.min_seconds)
        got = [store.search(collection, [q])[0].ids for q in fq[:200]]
        ok = [np.all(labels[np.searchsorted(items.ids, g)] == str(i % 10))
              for i, g in enumerate(got)]
        row["filtered_ok"] = float(np.mean(ok))
    batches = [qs[i:i + 64] for i in range(0, len(qs), 64)]
    phase(f"{name}: batches")
    with faiss_threads(2):
        t0 = time.perf_counter()
        rounds = 0
        while time.perf_counter() - t0 < args.min_seconds or rounds < 1:
            for b in batches:
                store.search(collection, b)
            rounds += 1
        row["batch_qps"] = rounds * len(qs) / (time.perf_counter() - t0)
    return row


def bench_writes(name: str, store, collection: str, items: Items, row: dict, args) -> None:
    """Insert rate and the writer's read of its own write (after the read figures: writes
    change the index, and HNSW keeps tombstones)."""
    phase(f"{name}: inserts")
    rng = np.random.default_rng(1)
    new = Items(np.arange(args.inserts) + 10 * args.n,
                items.vectors[rng.integers(0, len(items), args.inserts)] + 0.01,
                [str(i % 10) for i in range(args.inserts)], [{} for _ in range(args.inserts)])
    t0 = time.perf_counter()
    for s in range(0, args.inserts, 500):
        store.add(collection, new.take(np.arange(s, min(s + 500, args.inserts))))
    if hasattr(store, "flush"):  # FAISS: persist the changes as a derived version
        t1 = time.perf_counter()
        store.flush(collection)
        row["flush_s"] = time.perf_counter() - t1
    row["insert_per_s"] = args.inserts / (time.perf_counter() - t0)
    # the writer's own read after a write (read-your-writes)
    probe = new.vectors[0] + 5.0
    lat = []
    for j in range(5):
        pid = np.array([20 * args.n + j])
        t0 = time.perf_counter()
        store.add(collection, Items(pid, probe[None], ["p"], [{}]))
        hit = store.search(collection, [StoreQuery(probe, 1)])[0]
        lat.append(time.perf_counter() - t0)
        assert hit.ids[0] == pid[0], (name, hit)
        store.remove(collection, pid)
    row["write_then_read_ms"] = 1000 * float(np.median(lat))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--vectors", default=None,
                   help="an (N, d) float32 .npy of real embeddings instead of clustered vectors "
                        "(e.g. index_bench.py's LFW + CUB cache): --queries rows are held out "
                        "as queries, the rest indexed; --n and --dim are taken from the file")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--inserts", type=int, default=5000)
    p.add_argument("--factory", default="HNSW32")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--min-seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=7, help="alternating overhead rounds")
    p.add_argument("--backends", default="raw,faiss,milvus")
    p.add_argument("--work", default=None, help="directory for the index root and Milvus file")
    p.add_argument("--json", default=None)
    p.add_argument("--max-rss-gb", type=float, default=6.0,
                   help="stop the run if this process grows past it (a shared box: Milvus "
                        "Lite grew one run to 20 GB and the kernel killed it)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    work = Path(args.work or tempfile.mkdtemp(prefix="vsbench-"))
    work.mkdir(parents=True, exist_ok=True)
    guard_memory(args.max_rss_gb)
    rng = np.random.default_rng(0)
    if args.vectors:
        x = np.load(args.vectors).astype(np.float32)
        perm = rng.permutation(len(x))
        xq, xb = x[perm[:args.queries]], np.ascontiguousarray(x[np.sort(perm[args.queries:])])
        args.n, args.dim = xb.shape
    else:
        xb, centres = clustered(args.n, args.dim, args.clusters, rng)
        xq, _ = clustered(args.queries, args.dim, args.clusters, rng, centres)
    ids = np.arange(args.n, dtype=np.int64) * 2 + 1
    labels = np.array([str(i % 10) for i in range(args.n)])
    items = Items(ids, xb, labels.tolist(), [{"n": str(i % 7)} for i in range(args.n)])
    truth = exact_neighbours(xb, ids, xq, K)
    log.info("%d x %d vectors, %d queries: %s", args.n, args.dim, args.queries, work)
    rows = []
    wanted = args.backends.split(",")
    faiss_store = None
    if "faiss" in wanted or "raw" in wanted:
        faiss_store = open_vector_store("faiss", index_root=work / "index", config=IndexingConfig(
            factory=args.factory, target_recall=args.target_recall))
        rows.append(bench_store("faiss backend", faiss_store, "default", items, xq, truth,
                                labels, args))
        index = faiss_store.version("default").index  # the same index object, searched raw
        raw = {"backend": "raw FAISS (same index)", "index": rows[-1]["index"],
               "rss_mb": index_bytes(index) / 2**20}
        with faiss_threads(1):
            _, found = index.search(xq, K)
            raw["recall@10"] = recall(list(found), truth)
            raw["single_qps"] = timed_rate(lambda i: index.search(xq[i:i + 1], K), len(xq),
                                           min_seconds=args.min_seconds)
        with faiss_threads(2):
            t0, rounds = time.perf_counter(), 0
            while time.perf_counter() - t0 < args.min_seconds or rounds < 1:
                for s in range(0, len(xq), 64):
                    index.search(xq[s:s + 64], K)
                rounds += 1
            raw["batch_qps"] = rounds * len(xq) / (time.perf_counter() - t0)
        rows.insert(0, raw)
        phase("raw vs backend, alternating")
        raw["overhead"] = alternating_overhead(faiss_store, index, xq, args)
        rows[1]["index_mb"] = index_bytes(index) / 2**20
        bench_writes("faiss backend", faiss_store, "default", items, rows[1], args)
    if "milvus" in wanted:
        m = open_vector_store(f"milvus:{work / 'milvus.db'}", index=MilvusIndexConfig(
            m=32, target_recall=args.target_recall, flat_below=min(20_000, args.n // 2)))
        rows.append(bench_store("Milvus Lite backend", m, "default", items, xq, truth, labels,
                                args))
        bench_writes("Milvus Lite backend", m, "default", items, rows[-1], args)
        # what each consistency level costs a reader (another replica's view)
        for level in ("Strong", "Session", "Bounded", "Eventually"):
            m.read_consistency = level
            with faiss_threads(1):
                rows[-1][f"qps_{level}"] = timed_rate(
                    lambda i: m.search("default", [StoreQuery(xq[i], K)]), len(xq),
                    min_seconds=args.min_seconds / 2)
        m.close()
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


def alternating_overhead(store, index, xq: np.ndarray, args) -> dict:
    """The FAISS backend's q/s lost against ``index.search`` on the same index, timed in
    alternating windows (a shared box's load changes between back-to-back runs): the median of
    per-round ratios, single queries on 1 thread and batches of 64 on 2."""
    qs = [StoreQuery(v, K) for v in xq]
    batches = [(xq[s:s + 64], qs[s:s + 64]) for s in range(0, len(xq), 64)]
    single, batched = [], []
    window = max(0.3, args.min_seconds / 4)
    def pair(raw_fn, store_fn, n: int, first_raw: bool) -> float:
        if first_raw:
            r = timed_rate(raw_fn, n, min_seconds=window)
            return 1 - timed_rate(store_fn, n, min_seconds=window) / r
        b = timed_rate(store_fn, n, min_seconds=window)
        return 1 - b / timed_rate(raw_fn, n, min_seconds=window)

    for rnd in range(args.rounds):  # which goes first alternates too (no order effect)
        with faiss_threads(1):
            single.append(pair(lambda i: index.search(xq[i:i + 1], K),
                               lambda i: store.search("default", [qs[i]]), len(xq),
                               rnd % 2 == 0))
        with faiss_threads(2):
            batched.append(pair(lambda i: index.search(batches[i][0], K),
                                lambda i: store.search("default", batches[i][1]),
                                len(batches), rnd % 2 == 0))
    return {"single": float(np.median(single)), "batched": float(np.median(batched)),
            "rounds": args.rounds}


def print_table(rows: list[dict], args) -> None:
    def f(v, fmt="{:.0f}"):
        return "" if v is None else fmt.format(v)

    what = (f"real embeddings from {args.vectors}" if args.vectors
            else f"clustered ({args.clusters} clusters)")
    print(f"\n{args.n:,} x {args.dim} {what}, {args.queries} "
          f"held-out queries, k={K}, target recall {args.target_recall}\n")
    print("| backend | index (search params) | recall@10 | single q/s | batch-64 q/s | "
          "filtered q/s (1 label of 10) | insert/s | publish s (switch s) | memory MB | "
          "write→own read ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pub = "" if "publish_s" not in r else (
            f"{r['publish_s']:.1f}" + (f" ({r['switch_s']:.4f})" if r.get("switch_s") else ""))
        print(f"| {r['backend']} | {r.get('index', '')} | {f(r.get('recall@10'), '{:.3f}')} | "
              f"{f(r.get('single_qps'))} | {f(r.get('batch_qps'))} | "
              f"{f(r.get('filtered_qps'))} | {f(r.get('insert_per_s'))} | {pub} | "
              f"{f(r.get('rss_mb'))} | {f(r.get('write_then_read_ms'), '{:.1f}')} |")
    raw = next((r for r in rows if r["backend"].startswith("raw")), None)
    if raw and "overhead" in raw:
        o = raw["overhead"]
        print(f"\nFAISS backend overhead over raw FAISS (q/s lost, median of {o['rounds']} "
              f"alternating rounds): single {o['single']:+.1%}, batched {o['batched']:+.1%}")
    for r in rows:
        extra = {k: v for k, v in r.items() if k.startswith(("qps_", "flush", "filtered_ok",
                                                              "tuned"))}
        if extra:
            print(f"{r['backend']}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float)
                                                  else f"{k}={v}" for k, v in extra.items()))


if __name__ == "__main__":
    raise SystemExit(main())
