"""Memory per vector of each FAISS index type at 128-d (issue 15, docs/SCALING.md).

Builds Flat, HNSW32, IVF-SQ8 and IVF-PQ (with catalogue ids, as the indexer stores them) on
``--n`` clustered vectors and prints serialised bytes per vector (a faithful proxy for resident
memory: ``indexer.factory.index_bytes``) and the extrapolation to 100M vectors. Per-vector
cost is linear in n for these types, plus a fixed part (centroids, codebooks) measured here.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/index_memory_bench.py --n 200000
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.construct import make_index  # noqa: E402
from indexer.factory import index_bytes  # noqa: E402

FACTORIES = ["Flat", "HNSW32", "IVF1024,SQ8", "IVF1024,PQ32", "IVF1024,PQ16"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--factories", default=",".join(FACTORIES))
    args = p.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, args.dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, args.n)] + 0.5 * rng.standard_normal(
        (args.n, args.dim), dtype=np.float32)
    ids = np.arange(args.n, dtype=np.int64)
    print(f"{args.n:,} x {args.dim} float32\n")
    print("| index | build s | bytes/vector at n | fixed MB (at n/2 vs n) | GB at 100M (extrapolated) |")
    print("|---|---:|---:|---:|---:|")
    for f in _split(args.factories):
        t0 = time.perf_counter()
        half = make_index(f, args.dim, x[: args.n // 2], ids[: args.n // 2], seed=0)
        b_half = index_bytes(half)
        del half
        full = make_index(f, args.dim, x, ids, seed=0)
        b_full = index_bytes(full)
        secs = time.perf_counter() - t0
        per = (b_full - b_half) / (args.n - args.n // 2)  # marginal bytes per vector
        fixed = b_full - per * args.n
        print(f"| {f} | {secs:.1f} | {per:.1f} | {fixed / 2**20:.1f} | "
              f"{(fixed + per * 100e6) / 1e9:.1f} |")
        del full
    return 0


def _split(spec: str) -> list[str]:
    """"Flat,HNSW32,IVF1024,SQ8" -> ["Flat", "HNSW32", "IVF1024,SQ8"] (IVF takes its codes)."""
    out: list[str] = []
    for part in spec.split(","):
        if out and out[-1].startswith("IVF") and "," not in out[-1]:
            out[-1] += "," + part
        else:
            out.append(part)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
