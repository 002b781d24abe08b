"""Forward throughput of each backbone with NCHW (contiguous) vs channels-last input: why
``Embedder.embed_tensors`` hands the model channels-last batches.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/embed_layout_bench.py [--batch-size 64]
        [--arch smallcnn:64 --arch resnet18:160 ...] [--dlib]

Each row times the same model on the same random batch in both layouts, alternating windows
(best of ``--rounds``; the machine is shared), and reports the largest difference between the
two layouts' embeddings (different convolution kernels, the same function).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before OpenMP is loaded

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.models.backbones import build_model  # noqa: E402
from training.models.spec import ModelSpec  # noqa: E402

DEFAULT_ARCHS = ["smallcnn:64", "resnet18:160", "mobilenet_v3_small:160",
                 "mobilenet_v3_large:160", "resnet50:160"]


@torch.inference_mode()
def images_per_second(model: torch.nn.Module, batch: torch.Tensor, seconds: float) -> float:
    model(batch)  # warm-up: oneDNN builds its kernels for this shape and layout
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model(batch)
        done += len(batch)
    return done / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", help="ARCH:INPUT_SIZE (repeatable; default: "
                   + ", ".join(DEFAULT_ARCHS) + ")")
    p.add_argument("--dlib", action="store_true",
                   help="also dlib's face ResNet (needs face_recognition_models installed)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0, help="per timing window")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = []
    for item in args.arch or DEFAULT_ARCHS:
        arch, _, size = item.partition(":")
        spec = ModelSpec(arch=arch, embedding_dim=128, input_size=int(size or 64))
        models.append((arch, spec.input_size, build_model(spec).eval()))
    if args.dlib:
        from training.dlib.importer import import_face_resnet

        ckpt = import_face_resnet(face_align=None)
        models.append(("dlib face ResNet", ckpt.spec.input_size, ckpt.build().eval()))
    print(f"batch {args.batch_size}, {args.threads} torch threads, best of {args.rounds} "
          f"alternating windows of {args.seconds:g} s\n")
    print("| model | input | NCHW img/s | channels-last img/s | ratio | max abs diff |")
    print("|---|---|---:|---:|---:|---:|")
    for name, size, model in models:
        x = torch.randn(args.batch_size, 3, size, size)
        xl = x.contiguous(memory_format=torch.channels_last)
        nchw, last = [], []
        for _ in range(args.rounds):
            nchw.append(images_per_second(model, x, args.seconds))
            last.append(images_per_second(model, xl, args.seconds))
        with torch.inference_mode():
            diff = (model(x) - model(xl)).abs().max().item()
        print(f"| {name} | {size}px | {max(nchw):,.0f} | {max(last):,.0f} | "
              f"{max(last) / max(nchw):.2f}x | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
