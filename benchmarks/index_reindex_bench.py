"""Reindex throughput on real JPEGs (issue 5): images/s of `imgsim reindex`'s embedding stage vs the
model's pure forward throughput at the same batch size (decoding and I/O should be hidden).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/index_reindex_bench.py \
        --checkpoint CKPT [--checkpoint CKPT2] --images $IMGSIM_DATA/lfw/lfw-deepfunneled --limit 2000

For each checkpoint, in turn (best of ``--rounds`` each, the machine being shared):
- forward: ``Embedder.embed_tensors`` on batches already decoded and preprocessed in memory;
- reindex: plan + embedding chunks (DataLoader workers decode while the model runs) of ``--limit``
  catalogued LFW images, as `imgsim reindex` does, timed from start to the last chunk on disk;
- reindex without workers (decoding inline), to show what the workers hide;
- reindex with ``--pixel-cache`` (indexer.pixel_cache): the first run decodes and writes each
  image's preprocessed pixels ("fill"), later runs with a model of the same preprocessing read
  them instead of decoding ("warm") -- what a reindex after a retraining does.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before OpenMP is loaded

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer import reindex as rx  # noqa: E402
from indexer.catalog import open_catalog, sha256_file, upsert_images  # noqa: E402
from training.data.folders import list_image_folder  # noqa: E402
from training.models.embedder import Embedder  # noqa: E402
from training.settings import data_root  # noqa: E402


def forward_ips(emb: Embedder, paths: list[str], batch: int, seconds: float) -> float:
    """Images/s of the model alone, on preprocessed batches held in memory."""
    tensors = []
    for p in paths[:batch * 4]:
        with Image.open(p) as im:
            tensors.append(emb.transform(im))
    batches = [torch.stack(tensors[i:i + batch]) for i in range(0, len(tensors), batch)]
    emb.embed_tensors(batches[0])  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in batches:
            emb.embed_tensors(b)
            done += len(b)
    return done / (time.perf_counter() - t0)


def reindex_ips(ckpt: str, url: str, root: Path, *, batch: int, workers: int, n: int,
                pixel_cache: Path | None = None) -> float:
    """Images/s of the reindex embedding stage (plan + all chunks written)."""
    cfg = rx.ReindexConfig(checkpoint=ckpt, catalog_url=url, index_root=str(root / "idx"),
                           collection="lfw", work_dir=str(root / "work"), batch_size=batch,
                           num_workers=workers, chunk_size=1024, progress=False,
                           pixel_cache=str(pixel_cache) if pixel_cache else None)
    shutil.rmtree(root / "work", ignore_errors=True)
    t0 = time.perf_counter()
    rx.run_shard(cfg, 0, 1)
    seconds = time.perf_counter() - t0
    shutil.rmtree(root / "work", ignore_errors=True)
    return n / seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True)
    p.add_argument("--images", default=os.path.join(str(data_root()),
                                                    "lfw", "lfw-deepfunneled"))
    p.add_argument("--limit", type=int, default=2000, help="LFW images reindexed per measurement")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--forward-seconds", type=float, default=15.0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = list_image_folder(args.images)
    step = max(1, len(samples) // args.limit)
    samples = samples[::step][:args.limit]  # spread over people, not the first few folders
    root = Path(tempfile.mkdtemp(prefix="imgsim-reindex-bench-"))
    url = f"sqlite:///{root / 'cat.db'}"
    with open_catalog(url).begin() as s:
        upsert_images(s, [{"key": Path(x.path).stem, "path": x.path, "label": x.label,
                           "sha256": sha256_file(x.path)} for x in samples], collection="lfw")
    paths = [x.path for x in samples]
    print(f"{len(samples)} LFW JPEGs (250x250), batch {args.batch_size}, {args.threads} torch "
          f"threads, {args.num_workers} DataLoader workers, best of {args.rounds} rounds\n")
    print("| model | input | forward img/s | reindex img/s | ratio | no workers img/s "
          "| pixel cache: fill img/s | warm img/s | warm ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for ckpt in args.checkpoint:
        emb = Embedder.from_checkpoint(ckpt)
        fw, rw, r0, fill, warm = [], [], [], [], []
        run = dict(batch=args.batch_size, workers=args.num_workers, n=len(paths))
        for _ in range(args.rounds):
            fw.append(forward_ips(emb, paths, args.batch_size, args.forward_seconds))
            rw.append(reindex_ips(ckpt, url, root, **run))
            r0.append(reindex_ips(ckpt, url, root, **{**run, "workers": 0}))
            shutil.rmtree(root / "pixels", ignore_errors=True)
            fill.append(reindex_ips(ckpt, url, root, **run, pixel_cache=root / "pixels"))
            warm.append(reindex_ips(ckpt, url, root, **run, pixel_cache=root / "pixels"))
        f, r, w = max(fw), max(rw), max(warm)
        print(f"| {emb.spec.arch} ({Path(ckpt).name}) | {emb.spec.input_size}px | {f:,.0f} | "
              f"{r:,.0f} | {r / f:.2f} | {max(r0):,.0f} | {max(fill):,.0f} | {w:,.0f} | "
              f"{w / f:.2f} |", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
