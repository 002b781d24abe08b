"""Benchmark: descriptors per second, our PyTorch port vs dlib-bin, on the same LFW face chips."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.dlib.importer import find_face_model
from training.dlib.model import DlibFaceResNet, state_dict_from_dlib
from training.dlib.network import read_network
from training.face import FixedAligner
from training.settings import data_root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(data_root()))
    p.add_argument("--dat", default=None, help="dlib .dat (default: face_recognition_models')")
    p.add_argument("--images", type=int, default=192, help="LFW images (every k-th of the set)")
    p.add_argument("--rounds", type=int, default=2, help="alternating timing rounds")
    p.add_argument("--batch-sizes", default="16,32")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import dlib

    torch.set_num_threads(args.threads)
    dat = find_face_model(args.dat)
    files = sorted(Path(args.data, "lfw", "lfw-deepfunneled").glob("*/*.jpg"))
    files = files[:: max(1, len(files) // args.images)][: args.images]
    aligner = FixedAligner()
    chips = [np.ascontiguousarray(np.asarray(aligner(Image.open(f).convert("RGB"))))
             for f in files]
    net = read_network(dat)
    model = DlibFaceResNet()
    model.load_state_dict(state_dict_from_dlib(net))
    model = model.eval().to(memory_format=torch.channels_last)
    mean = np.array(net.input_mean, np.float32)
    x = torch.from_numpy(((np.stack(chips).astype(np.float32) - mean) / 256.0)
                         .transpose(0, 3, 1, 2).copy()).contiguous(memory_format=torch.channels_last)
    ref = dlib.face_recognition_model_v1(str(dat))
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    def run_dlib() -> tuple[float, np.ndarray]:
        t = time.perf_counter()
        d = np.array([np.array(ref.compute_face_descriptor(c)) for c in chips])
        return len(chips) / (time.perf_counter() - t), d

    @torch.inference_mode()
    def run_ours(bs: int) -> tuple[float, np.ndarray]:
        model(x[:bs])  # warm-up
        t = time.perf_counter()
        out = torch.cat([model(x[i:i + bs]) for i in range(0, len(x), bs)])
        return len(chips) / (time.perf_counter() - t), out.numpy()

    speeds: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # alternate, so that load from other work hits both alike
        s, d_dlib = run_dlib()
        speeds.setdefault("dlib-bin (compute_face_descriptor, one chip per call)", []).append(s)
        for bs in sizes:
            s, d_ours = run_ours(bs)
            speeds.setdefault(f"PyTorch port, batch {bs}, channels_last", []).append(s)
    base = np.mean(next(iter(speeds.values())))
    print(f"\n{len(chips)} LFW chips (150x150), {args.rounds} alternating rounds, "
          f"torch threads {args.threads}; max |ours - dlib| = {np.abs(d_ours - d_dlib).max():.2e}\n")
    print("| implementation | images/s (mean of rounds) | vs dlib-bin |")
    print("|---|---|---|")
    for name, v in speeds.items():
        print(f"| {name} | {np.mean(v):.1f} | {np.mean(v) / base:.1f}x |")


if __name__ == "__main__":
    main()
