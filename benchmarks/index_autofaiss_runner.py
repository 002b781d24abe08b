"""Run autofaiss on saved vectors, in autofaiss's own virtualenv (it needs numpy<2; see index_bench).

Usage (by benchmarks/index_bench.py):
    AFPY vectors.npy out_dir --memory 600MB --k 10 --cores 2
Writes out_dir/knn.index and out_dir/result.json (chosen factory, search params, build seconds).
"""

import argparse
import json
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("vectors")
    p.add_argument("out")
    p.add_argument("--memory", default="1G", help="max_index_memory_usage")
    p.add_argument("--available", default="8G", help="current_memory_available")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    import faiss
    import numpy as np
    from autofaiss import build_index

    faiss.omp_set_num_threads(args.cores)
    x = np.load(args.vectors, mmap_mode="r")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    _, infos = build_index(
        embeddings=np.ascontiguousarray(x, dtype=np.float32),
        index_path=os.path.join(args.out, "knn.index"),
        index_infos_path=os.path.join(args.out, "infos.json"),
        max_index_memory_usage=args.memory, current_memory_available=args.available,
        metric_type="l2", min_nearest_neighbors_to_retrieve=args.k, nb_cores=args.cores,
        verbose=30)
    seconds = time.perf_counter() - t0
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"build_seconds": seconds, "infos": infos}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
