"""Time of `imgsim demo` (what `make run` runs after the install) from an empty root to SERVING.

    .venv/bin/python benchmarks/demo_start.py [--runs 2] [--root /tmp/imgsim-demo-start]
    .venv/bin/python benchmarks/demo_start.py --sweep '{"steps_per_epoch": 40}' '{"epochs": 2}'

Each run deletes the root, starts `imgsim demo` as `make run` does and probes the standard
health service with a fresh channel every 0.25 s (a reused channel's reconnect backoff would add
seconds). Prints, per run: seconds to the start of training, to the published index and to
SERVING, then the demo model's held-out (validation classes) MAP@R per epoch and the epoch
kept, and the second start's time (model and index reused). The install is not included: time
it on a fresh clone (`time make install`).

``--sweep CONFIG...``: instead, train the demo model once per JSON override of its digits
training config (the demo's hold-out, seed 0: the same validation classes each time) and print
training seconds, held-out MAP@R per epoch, and on the index side (all 10 digits, 8 of them
trained on) MAP@R, P@1 and the 30 held-out queries' top-1 hits: quality against time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
MARKS = {"training": "training the demo model", "indexed": "indexer.build: published"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def time_demo(root: Path, *, fresh: bool, limit: float = 600) -> dict[str, float]:
    """Seconds from starting `imgsim demo` to each mark and to SERVING."""
    if fresh:
        shutil.rmtree(root, ignore_errors=True)
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "imgsim.cli", "demo", "--root", str(root),
                             "--host", "127.0.0.1", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    marks: dict[str, float] = {}

    def read() -> None:
        for line in proc.stdout:
            text = line.decode(errors="replace")
            for name, needle in MARKS.items():
                if needle in text and name not in marks:
                    marks[name] = time.perf_counter() - t0

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not _serving(port):
            if proc.poll() is not None or time.perf_counter() - t0 > limit:
                raise RuntimeError(f"imgsim demo exited ({proc.returncode}) or took over "
                                   f"{limit:.0f}s before SERVING")
            time.sleep(0.25)
        marks["serving"] = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
    return marks


def sweep(overrides: list[str], work: Path) -> None:
    import numpy as np

    from service.demo import _hold_out, export_digits
    from training.checkpoint import load_checkpoint
    from training.data.folders import list_image_folder
    from training.engine.train import TrainConfig, train
    from training.evaluation.retrieval import retrieval_metrics
    from training.models.embedder import Embedder

    src = work / "digits"
    if not src.is_dir():
        export_digits(src)
    rest, queries = _hold_out(list_image_folder(src), per_class=3, max_classes=10)
    base = dict(arch="smallcnn", input_size=32, embedding_dim=64, p=10, k=8, loss="contrastive",
                margin=0.5, steps_per_epoch=15, epochs=2, num_workers=0, val_fraction=0.2,
                val_metric="map@r", tensorboard=False)  # service.demo's digits config
    print("| override | train (s) | held-out MAP@R per epoch | kept | index MAP@R | P@1 | "
          "query top-1 |")
    print("|---|---|---|---|---|---|---|")
    for text in overrides:
        out = work / "model"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        path = train(TrainConfig(data=str(src), out=str(out), name="demo",
                                 **{**base, **json.loads(text)}), samples=rest)
        seconds = time.perf_counter() - t0
        ckpt = load_checkpoint(path)
        emb = Embedder(ckpt.build().eval(), ckpt.spec)
        er, eq = emb.embed_paths([s.path for s in rest]), emb.embed_paths([s.path for s in queries])
        lr, lq = np.array([s.label for s in rest]), np.array([s.label for s in queries])
        top1 = int((lr[(eq @ er.T).argmax(1)] == lq).sum())
        m = retrieval_metrics(er, lr, nmi=False)
        curve = [round(h.get("val_map@r", float("nan")), 3) for h in ckpt.metrics["history"]]
        print(f"| `{text}` | {seconds:.1f} | {curve} | {ckpt.metrics['best'].get('epoch')} | "
              f"{m['map@r']:.3f} | {m['precision@1']:.3f} | {top1}/{len(queries)} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--root", type=Path, default=Path("/tmp/imgsim-demo-start"))
    ap.add_argument("--sweep", nargs="+", metavar="CONFIG",
                    help="JSON overrides of the demo's training config, one model each")
    args = ap.parse_args()
    if args.sweep:
        sweep(args.sweep, args.root)
        return 0
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    print("| run | to training (s) | to index published (s) | to SERVING (s) |")
    print("|---|---|---|---|")
    for i in range(args.runs):
        m = time_demo(args.root, fresh=True)
        print(f"| {i + 1} | {m.get('training', float('nan')):.1f} | "
              f"{m.get('indexed', float('nan')):.1f} | {m['serving']:.1f} |", flush=True)
    again = time_demo(args.root, fresh=False)
    print(f"second start (model and index reused): SERVING after {again['serving']:.1f}s")
    info = json.loads((args.root / "demo.json").read_text())
    from training.checkpoint import load_checkpoint

    metrics = load_checkpoint(info["checkpoint"]).metrics
    curve = [round(h.get("val_map@r", float("nan")), 3) for h in metrics["history"]]
    print(f"held-out MAP@R per epoch {curve}; kept epoch {metrics['best'].get('epoch')}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
