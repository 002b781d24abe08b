"""CPU per search through the service core on the demo index (FAISS default path), for A/B runs
of two source trees on a shared box where wall-clock q/s swings with the load.

Queries are catalogued keys (the vector is looked up: no decoding, no model), so what is timed
is the core's search path: checks, filters, the LiveIndex batcher, FAISS, hits. CPU time of the
whole process (all threads) per query; the minimum of rounds is the figure least disturbed by
other processes. Needs `make run` (or `imgsim demo`) to have built var/demo first.

    git archive OLD | tar -x -C /tmp/old && cp -r imgsim/v1 /tmp/old/imgsim/
    for t in /tmp/old .; do (cd $t && PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE \\
        python $OLDPWD/benchmarks/core_search_cpu.py --demo $OLDPWD/var/demo/demo.json); done
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="var/demo/demo.json")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=40, help="passes over 64 keys per round")
    args = p.parse_args()

    import faiss
    from sqlalchemy import select

    from indexer.catalog import ImageRow, open_catalog
    from indexer.versions import load_index_version
    from service.core import CoreOptions, ImageInput, SimilarityCore
    from training.models.embedder import Embedder

    faiss.omp_set_num_threads(1)
    d = json.load(open(args.demo))
    core = SimilarityCore(Embedder.from_checkpoint(d["checkpoint"]),
                          load_index_version(d["index_root"]), open_catalog(d["catalog_url"]),
                          options=CoreOptions())
    try:
        with core.sessions() as s:
            queries = [ImageInput(key=k) for k in s.scalars(select(ImageRow.key).limit(64))]
        for q in queries:  # warm the batcher and the entry cache
            core.search(q, 10)
        cpu = []
        for _ in range(args.rounds):
            t = time.process_time()
            for _ in range(args.repeat):
                for q in queries:
                    core.search(q, 10)
            cpu.append((time.process_time() - t) / (args.repeat * len(queries)) * 1e6)
    finally:
        core.close()
    print(f"{min(cpu):.1f} us CPU/query (min of {len(cpu)} rounds), median "
          f"{statistics.median(cpu):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
