"""Write -> other-replica read delay over one Milvus store (issue 15, stateless replicas).

Replica A (this process) opens Milvus Lite on a file and upserts one vector at a time; replica
B (a subprocess, as a second `imgsim serve` would) reads through Milvus Lite's loopback port and
searches for it in a loop from before the write. The delay is B's first search that finds the
id minus the moment A's upsert returned (one host: one clock), with B at each read consistency
level; A's own read-after-write (its first read after a write runs Strong) is timed beside it.
Prints a markdown table.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/replica_delay_bench.py --n 10000 --trials 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.stores import Items, StoreQuery  # noqa: E402
from indexer.stores.milvus_store import MilvusStore  # noqa: E402

REPLICA = """
import sys, time
import numpy as np
from indexer.stores import StoreQuery, open_vector_store
address, level, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
b = open_vector_store("milvus:http://" + address, read_consistency=level)
for line in sys.stdin:  # "poll ID VALUE": search until ID is the nearest hit
    _, want, value = line.split()
    probe = np.full(dim, float(value), np.float32)
    searches, t_first, seen = 0, time.time(), None
    lat = []
    while time.time() - t_first < 30:
        t = time.perf_counter()
        hits = b.search("bench", [StoreQuery(probe, 1)])[0]
        lat.append(time.perf_counter() - t)
        searches += 1
        if len(hits.ids) and int(hits.ids[0]) == int(want):
            seen = time.time()
            break
    print(seen if seen is not None else -1, searches, float(np.median(lat)), flush=True)
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--levels", default="Bounded,Strong,Eventually")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        a = MilvusStore(str(Path(tmp) / "bench.db"))
        t = time.perf_counter()
        a.publish("bench", Items(np.arange(args.n, dtype=np.int64), x))
        print(f"published {args.n} x {args.dim} in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)
        address = a.client._get_connection()._address
        repo = Path(__file__).resolve().parents[1]
        rows = []
        next_id = 10_000_000
        for level in args.levels.split(","):
            b = subprocess.Popen([sys.executable, "-c", REPLICA, address, level, str(args.dim)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
            delays, own, lats, missed, own_missed = [], [], [], 0, 0
            try:
                for trial in range(args.trials + 1):  # the first trial warms B up
                    next_id += 1
                    # far from every stored vector and from every earlier probe (a tie at
                    # distance 0 would let either id be the nearest)
                    value = 50.0 + len(rows) * (args.trials + 1) + trial
                    b.stdin.write(f"poll {next_id} {value}\n")
                    b.stdin.flush()
                    time.sleep(0.05)  # B is searching before the write
                    vec = np.full((1, args.dim), value, np.float32)
                    a.add("bench", Items(np.array([next_id]), vec))
                    written = time.time()
                    t = time.perf_counter()
                    found = a.search("bench", [StoreQuery(vec[0], 1)])[0]
                    own_ms = (time.perf_counter() - t) * 1e3
                    seen, _, lat = b.stdout.readline().split()
                    if trial == 0:
                        continue
                    own_missed += not (len(found.ids) and int(found.ids[0]) == next_id)
                    if float(seen) < 0:
                        missed += 1
                    else:
                        delays.append(max(0.0, (float(seen) - written) * 1e3))
                    own.append(own_ms)
                    lats.append(float(lat) * 1e3)
            finally:
                b.stdin.close()
                b.wait(timeout=60)
            d = delays or [float("nan")]
            p95 = statistics.quantiles(d, n=20, method="inclusive")[18] if len(d) >= 2 else d[0]
            rows.append((level, len(delays), missed, statistics.median(d), p95, max(d),
                         statistics.median(lats), statistics.median(own),
                         own_missed))
            print(f"{level}: {rows[-1]}", file=sys.stderr)
        a.close()
    print(f"\n{args.n} x {args.dim}, {args.trials} writes per level; delay = B's first search "
          "finding the id - A's upsert returned\n")
    print("| B's read consistency | writes seen | not seen in 30 s | delay p50 ms | p95 ms | "
          "max ms | B's search ms (p50) | A's own read ms (p50, Strong) | A missed its own write |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | "
              f"{r[6]:.1f} | {r[7]:.1f} | {r[8]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
