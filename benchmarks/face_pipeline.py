"""Benchmark (issue 16): the whole photo path, decode -> detect -> align -> embed, ours (MTCNN,
and dlib's HOG as the option) vs face_recognition's calls (HOG upsample 1, dlib's 5-point
model, dlib's descriptor via dlib-bin), side by side on the same LFW photos: images/s, and
View 2 accuracy with per-fold thresholds as shipped and degraded, detection rate per row and
accuracy on the pairs where a detector found no face.

Per-image embeddings are cached per (pipeline, row) under --cache, so rows can be computed in
pieces (the face_recognition side runs at ~20 images/s on this box).

``--view 1`` scores View 1 instead (pairsDevTrain's 2,200 pairs and pairsDevTest's 1,000 as two
folds, each one's threshold chosen on the other): LFW's development view, where choices about
the pipeline are made before View 2 is looked at. ``--box-map ratio`` embeds with the earlier
fixed-ratio MTCNN -> dlib box map instead of the least-squares one (give it its own --cache).

    .venv/bin/python benchmarks/face_pipeline.py --view 1 --speed-images 0 --cache runs/face_view1 --rows grey"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from face_robustness import degrade, subset  # noqa: E402

from training.checkpoint import load_checkpoint  # noqa: E402
from training.evaluation.lfw import (  # noqa: E402
    LfwPairs,
    load_view2,
    read_lfw_pairs,
    resolve_lfw_root,
    view2_accuracy,
)
from training.face.aligners import FixedAligner, LandmarkAligner, find_landmarks_file  # noqa: E402
from training.face.main_face import main_face_first  # noqa: E402
from training.models.embedder import Embedder  # noqa: E402
from training.settings import data_root  # noqa: E402

log = logging.getLogger("face_pipeline")
PIPELINES = ("ours-mtcnn", "ours-hog", "face_recognition")
# accuracy only: face_recognition with the face chosen as ours is (main_face_first) instead of
# the largest, to show what the choice alone is worth on their side
EXTRA_PIPELINES = ("face_recognition-main",)
# speed only: the face step one photo at a time (the model's forward still batched); and the
# service's own ImagePipeline (decode threads, the batched face step and the forward pass in
# their micro-batchers, overlapping) fed every photo as a request of its own by
# SERVICE_CLIENTS concurrent callers, as the gRPC/HTTP handlers call it (the network aside)
SPEED_PIPELINES = ("ours-mtcnn", "ours-mtcnn-service", "ours-mtcnn-one-by-one", "ours-hog",
                   "face_recognition")
SERVICE_CLIENTS = 32


class Pipelines:
    """The three paths, each: list of encoded photos -> ((n, 128) unit rows, (n,) face found)."""

    def __init__(self, checkpoint: str) -> None:
        import dlib

        self.dlib = dlib
        ckpt = load_checkpoint(checkpoint)
        # chips are cut here (to see the misses); the embedder is the checkpoint's otherwise
        self.embedder = Embedder(ckpt.build(), replace(ckpt.spec, face_align=None))
        self.aligners = {"ours-mtcnn": LandmarkAligner(detector="mtcnn"),
                         "ours-hog": LandmarkAligner(detector="dlib-hog")}
        self.fixed = FixedAligner()
        self._ckpt = ckpt
        self._service = None
        # face_recognition 1.3.0 cannot be imported here (its models package needs
        # pkg_resources); its calls are made directly: face_locations(img) = detector(img, 1),
        # face_encodings(img, model="small") = pose_predictor_5_point +
        # compute_face_descriptor(num_jitters=1). On a miss the whole image is the box.
        self.hog = dlib.get_frontal_face_detector()
        self.sp = dlib.shape_predictor(str(find_landmarks_file()))
        self.frec = dlib.face_recognition_model_v1(
            str(find_landmarks_file().parent / "dlib_face_recognition_resnet_model_v1.dat"))

    def service(self):
        """The service's ImagePipeline over the checkpoint with the mtcnn5 face step."""
        if self._service is None:
            from service.images import ImagePipeline

            spec = replace(self._ckpt.spec, face_align="mtcnn5", face_on_miss="fallback")
            self._service = ImagePipeline(Embedder(self.embedder.model, spec))
        return self._service

    def _run_service(self, photos: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        from concurrent.futures import ThreadPoolExecutor

        pipeline = self.service()
        with ThreadPoolExecutor(SERVICE_CLIENTS) as clients:
            done = list(clients.map(lambda b: pipeline.embed_faces([b]), photos))
        emb = np.concatenate([d.vectors for d in done])
        return emb / np.linalg.norm(emb, axis=1, keepdims=True), \
            np.array([d.faces[0] for d in done])

    def run(self, name: str, photos: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        if name == "ours-mtcnn-service":
            return self._run_service(photos)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in photos]
        if name.startswith("face_recognition"):
            return self._face_recognition(images, main_face=name == "face_recognition-main")
        if name.endswith("-one-by-one"):
            aligner = self.aligners[name.removesuffix("-one-by-one")]
            aligned = [aligner.align_many([im])[0] for im in images]
        else:
            aligned = self.aligners[name].align_many(images)  # batched where the detector is
        emb = self.embedder.embed_images([chip for chip, _ in aligned], batch_size=64)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True), np.array([f for _, f in aligned])

    def _face_recognition(self, images: list[Image.Image], main_face: bool = False
                          ) -> tuple[np.ndarray, np.ndarray]:
        emb, found = np.zeros((len(images), 128), np.float32), np.zeros(len(images), bool)
        for i, image in enumerate(images):
            rgb = np.asarray(image)
            dets = self.hog(rgb, 1)
            found[i] = len(dets) > 0
            if not len(dets):  # the whole image as the box, as their callers do on a miss
                det = self.dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
            elif main_face:
                det = self.dlib.rectangle(*main_face_first(
                    [(d.left(), d.top(), d.right(), d.bottom()) for d in dets],
                    rgb.shape[1], rgb.shape[0])[0])
            else:
                det = max(dets, key=lambda d: d.area())
            emb[i] = np.array(self.frec.compute_face_descriptor(rgb, self.sp(rgb, det), 1))
        return emb, found


def encoded(path: str, row: str) -> bytes:
    """The photo as the user sends it: degraded, then JPEG-encoded (q95; jpeg30's own q30)."""
    if row == "shipped":
        return Path(path).read_bytes()
    image = degrade(Image.open(path), row)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=30 if "jpeg30" in row else 95)
    return buf.getvalue()


def cached_embeddings(pipes: Pipelines, name: str, row: str, paths: list[str], cache: Path,
                      chunk: int, budget_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``paths`` through pipeline ``name``, computed where the cache lacks them
    (saved after every chunk); rows not computed within ``budget_s`` stay NaN."""
    file = cache / f"{name}__{row}.npz"
    have: dict[str, tuple[np.ndarray, bool]] = {}
    if file.exists():
        z = np.load(file)
        have = {p: (e, bool(f)) for p, e, f in zip(z["paths"], z["emb"], z["found"], strict=True)}
    todo = [p for p in paths if p not in have]
    t0 = time.perf_counter()
    for i in range(0, len(todo), chunk):
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            log.info("%s %s: budget spent, %d images left", name, row, len(todo) - i)
            break
        part = todo[i:i + chunk]
        emb, found = pipes.run(name, [encoded(p, row) for p in part])
        have.update({p: (e, bool(f)) for p, e, f in zip(part, emb, found, strict=True)})
        keys = sorted(have)
        np.savez(file, paths=np.array(keys), emb=np.stack([have[k][0] for k in keys]),
                 found=np.array([have[k][1] for k in keys]))
        log.info("%s %s: %d/%d cached", name, row, len(paths) - len(todo) + i + len(part),
                 len(paths))
    nan = (np.full(128, np.nan, np.float32), False)
    return (np.stack([have.get(p, nan)[0] for p in paths]),
            np.array([have.get(p, nan)[1] for p in paths]))


def speed(pipes: Pipelines, paths: list[str], rounds: int) -> dict[str, tuple[float, float]]:
    """(images/s, images per CPU-second of this process, all threads) of each path on the same
    encoded photos, in alternating rounds (the best round of each)."""
    photos = [Path(p).read_bytes() for p in paths]
    best = dict.fromkeys(SPEED_PIPELINES, (0.0, 0.0))
    for name in SPEED_PIPELINES:
        pipes.run(name, photos[:8])  # warm-up: model loading, first-call allocations
    for _ in range(rounds):
        for name in SPEED_PIPELINES:
            t0, c0 = time.perf_counter(), time.process_time()
            pipes.run(name, photos)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if len(photos) / wall > best[name][0]:
                best[name] = (len(photos) / wall, len(photos) / cpu)
    return best


def load_view1(data: str) -> LfwPairs:
    """View 1 as two folds: pairsDevTrain (fold 1) and pairsDevTest (fold 2)."""
    root = resolve_lfw_root(data)
    train, test = (read_lfw_pairs(root / f, root / "lfw-deepfunneled")
                   for f in ("pairsDevTrain.txt", "pairsDevTest.txt"))
    return LfwPairs(train.paths_a + test.paths_a, train.paths_b + test.paths_b,
                    np.concatenate([train.same, test.same]),
                    np.concatenate([np.ones(len(train), int), np.full(len(test), 2)]))


def use_ratio_box_map() -> None:
    """MTCNN boxes mapped to dlib's by the earlier fixed ratios (MTCNN_TO_DLIB), for comparing
    maps: the detector looks the module's _to_dlib_box up at each call."""
    from training.face import aligners

    aligners._to_dlib_box = lambda box, points: tuple(
        int(round(float(v))) for v in aligners.fixed_ratio_box(box))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="var/issue16/dlib.pt", help="imgsim import-dlib output")
    p.add_argument("--data", default=str(data_root()))
    p.add_argument("--cache", default="runs/face_pipeline")
    p.add_argument("--rows", default="shipped,96px,64px,grey,jpeg30")
    p.add_argument("--limit", type=int, default=None, help="pairs per fold (default: all 600)")
    p.add_argument("--speed-images", type=int, default=256, help="0: skip the speed table")
    p.add_argument("--speed-rounds", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=None,
                   help="per (pipeline, row): stop computing after this long (the cache keeps it)")
    p.add_argument("--pipelines", default=",".join(PIPELINES),
                   help="which pipelines get accuracy rows (their caches fill in pieces), of "
                        f"{', '.join(PIPELINES + EXTRA_PIPELINES)}")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--view", type=int, choices=(1, 2), default=2,
                   help="2: View 2's 10 folds (the reported figures); 1: View 1's DevTrain and "
                        "DevTest as two folds (for development choices)")
    p.add_argument("--box-map", choices=("lsq", "ratio"), default="lsq",
                   help="MTCNN -> dlib box map: the least-squares fit (shipped) or the earlier "
                        "fixed ratios")
    args = p.parse_args()
    unknown = set(args.pipelines.split(",")) - set(PIPELINES + EXTRA_PIPELINES)
    if unknown:
        p.error(f"unknown pipelines {', '.join(sorted(unknown))}; valid: "
                f"{', '.join(PIPELINES + EXTRA_PIPELINES)}")
    if args.box_map == "ratio":
        use_ratio_box_map()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    pipes = Pipelines(args.checkpoint)
    pairs = load_view2(args.data)
    print(f"machine: {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    if args.speed_images:
        paths = pairs.unique_paths()[:: max(1, len(pairs.unique_paths()) // args.speed_images)]
        paths = paths[:args.speed_images]
        rate = speed(pipes, paths, args.speed_rounds)
        print(f"\nfull path (decode -> detect -> align -> embed), {len(paths)} LFW View 2 photos "
              f"as shipped, best of {args.speed_rounds} alternating rounds, load average after "
              f"{os.getloadavg()[0]:.2f}\n")
        print("| pipeline | images/s | x face_recognition | images per CPU-second | x face_recognition |")
        print("|---|---|---|---|---|")
        fr_wall, fr_cpu = rate["face_recognition"]
        for name in SPEED_PIPELINES:
            wall, cpu = rate[name]
            print(f"| {name} | {wall:.1f} | {wall / fr_wall:.1f}x | {cpu:.1f} | {cpu / fr_cpu:.1f}x |")
    if not args.rows:
        return

    if args.view == 1:
        pairs = load_view1(args.data)
    else:
        pairs = subset(pairs, list(range(1, 11)), args.limit)
    paths = pairs.unique_paths()
    row_of = {q: i for i, q in enumerate(paths)}
    ia = np.array([row_of[q] for q in pairs.paths_a])
    ib = np.array([row_of[q] for q in pairs.paths_b])
    if args.view == 1:
        print(f"\naccuracy: View 1, DevTrain and DevTest as two folds, {len(pairs)} pairs "
              f"({len(paths)} images), box map {args.box_map}\n")
    else:
        print(f"\naccuracy: View 2, 10 folds, {len(pairs)} pairs ({len(paths)} images), "
              f"{'all 600' if args.limit is None else args.limit} pairs per fold, box map "
              f"{args.box_map}\n")
    print("| row | pipeline | pairs | detected | accuracy | pairs with a miss | accuracy on them |")
    print("|---|---|---|---|---|---|---|")
    verdicts: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for row in args.rows.split(","):
        for name in args.pipelines.split(","):
            emb, found = cached_embeddings(pipes, name, row, paths, cache, args.chunk,
                                           args.budget_s)
            done = ~np.isnan(emb[:, 0])
            ok = done[ia] & done[ib]
            folds = pairs.fold[ok]
            if len(set(folds.tolist())) < 2 or any(  # too little cached yet for the protocol
                    len(set(pairs.same[ok][folds == f].tolist())) < 2 for f in set(folds.tolist())):
                print(f"| {row} | {name} | {ok.sum()} | - | - | - | - |")
                continue
            dist = np.linalg.norm(emb[ia[ok]] - emb[ib[ok]], axis=1)
            acc = view2_accuracy(dist, pairs.same[ok], pairs.fold[ok])
            miss = ~(found[ia[ok]] & found[ib[ok]])
            thr = float(np.mean(acc["thresholds"]))
            verdicts[row, name] = (ok, dist <= thr, ~miss)
            on_miss = f"{100 * ((dist[miss] <= thr) == pairs.same[ok][miss]).mean():.2f}%" \
                if miss.any() else "-"
            print(f"| {row} | {name} | {ok.sum()} | {100 * found[done].mean():.2f}% | "
                  f"{100 * acc['accuracy_mean']:.2f}% ± {100 * acc['accuracy_std']:.2f} | "
                  f"{miss.sum()} | {on_miss} |", flush=True)
    cross(verdicts, pairs.same, args.rows.split(","))


def cross(verdicts, same: np.ndarray, rows: list[str], ours: str = "ours-mtcnn",
          theirs: str = "face_recognition") -> None:
    """Accuracy of both pipelines on the pairs where either of them found no face in an image
    (each with its own mean fold threshold)."""
    print(f"\npairs where {ours} or {theirs} found no face in an image\n")
    print(f"| row | pairs | {ours} on them | {theirs} on them |\n|---|---|---|---|")
    for row in rows:
        if (row, ours) not in verdicts or (row, theirs) not in verdicts:
            continue
        (ok_a, says_a, found_a), (ok_b, says_b, found_b) = verdicts[row, ours], verdicts[row, theirs]
        if not (ok_a.all() and ok_b.all()):  # both need every pair computed
            continue
        miss = ~(found_a & found_b)
        if not miss.any():
            print(f"| {row} | 0 | - | - |")
            continue
        print(f"| {row} | {miss.sum()} | {100 * (says_a[miss] == same[miss]).mean():.2f}% | "
              f"{100 * (says_b[miss] == same[miss]).mean():.2f}% |")


if __name__ == "__main__":
    main()
