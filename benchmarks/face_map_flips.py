"""Which View 2 verdicts changed between two caches of face_pipeline.py embeddings (issue 16:
the fixed-ratio box map, moved to ``--before``, vs the View 1 fit in ``--after``), per row.

    .venv/bin/python benchmarks/face_map_flips.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from face_robustness import subset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.evaluation.lfw import load_view2, view2_accuracy  # noqa: E402
from training.settings import data_root  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(data_root()))
    p.add_argument("--before", default="runs/face_pipeline_full/ratio_map")
    p.add_argument("--after", default="runs/face_pipeline_full")
    p.add_argument("--pipeline", default="ours-mtcnn")
    p.add_argument("--rows", default="shipped,96px,64px,grey,jpeg30")
    args = p.parse_args()
    pairs = subset(load_view2(args.data), list(range(1, 11)), None)
    paths = pairs.unique_paths()
    row_of = {q: i for i, q in enumerate(paths)}
    ia = np.array([row_of[q] for q in pairs.paths_a])
    ib = np.array([row_of[q] for q in pairs.paths_b])
    folds = sorted(set(pairs.fold.tolist()))

    def right(cache: Path) -> np.ndarray:
        z = np.load(cache)
        have = dict(zip(z["paths"], z["emb"], strict=True))
        emb = np.stack([have[q] for q in paths])
        dist = np.linalg.norm(emb[ia] - emb[ib], axis=1)
        thr = dict(zip(folds, view2_accuracy(dist, pairs.same, pairs.fold)["thresholds"],
                       strict=True))
        return (dist <= np.array([thr[f] for f in pairs.fold])) == pairs.same

    print("| row | right before, wrong after | wrong before, right after |")
    print("|---|---:|---:|")
    for row in args.rows.split(","):
        name = f"{args.pipeline}__{row}.npz"
        before, after = right(Path(args.before) / name), right(Path(args.after) / name)
        print(f"| {row} | {int((before & ~after).sum())} | {int((~before & after).sum())} |")


if __name__ == "__main__":
    main()
