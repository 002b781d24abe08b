"""Load test of the real gRPC server against the machine's own limit, with a hot swap mid-run.

    .venv/bin/python benchmarks/service_load.py [--data $IMGSIM_DATA] [--out runs/service_load]

Trains a small model on LFW (cached under --out), indexes LFW images, starts `imgsim serve` in
a subprocess, runs locust headless (loadtests/locustfile.py: Search 3 : Verify 1 : Embed 1,
held-out LFW JPEGs) at several user counts, then paced at half the saturation rate, and prints
requests/s, images/s, p50/p95/p99 latency and failures next to **the limit**: the same model's
in-process batched forward throughput on this machine, measured before and after the runs.
During the busiest run a new index version is published and the server swaps to it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from indexer.build import BuildConfig, build_index  # noqa: E402
from indexer.versions import load_index_version, new_version_name, publish_index_version  # noqa: E402
from service.client import SimilarityClient  # noqa: E402
from training.data.folders import Sample  # noqa: E402
from training.data.transforms import decode_image  # noqa: E402
from training.engine.train import TrainConfig, train  # noqa: E402
from training.models.embedder import Embedder  # noqa: E402
from training.settings import data_root  # noqa: E402

log = logging.getLogger("service_load")

# Server and limit run with the same environment. PASSIVE: OpenMP threads sleep instead of
# spinning at barriers; on a machine shared with other work, spinning threads wait on each
# other's preempted partners and a 2-thread forward pass can run 10-40x slower (measured).
CHILD_ENV = {**os.environ, "PYTHONPATH": str(REPO),
             "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


@dataclass(frozen=True)
class LoadConfig:
    data: str
    out: str = "runs/service_load"
    arch: str = "resnet18"
    input_size: int = 160  # FaceNet's input size; heavy enough that the model, not RPC overhead, dominates
    train_steps: int = 12
    index_images: int = 600
    query_images: int = 200
    users: tuple[int, ...] = (1, 4, 8, 16, 32)  # the last one is the saturation level
    half_users: int = 8
    seconds: int = 30
    warmup_seconds: int = 8
    max_batch: int = 16
    max_wait_ms: float = 5.0
    limit_seconds: float = 10.0
    threads: int = 2


def lfw_samples(data: Path) -> list[Sample]:
    root = data / "lfw" / "lfw-deepfunneled"
    if not root.is_dir():
        raise SystemExit(f"LFW not found under {root} (set --data or IMGSIM_DATA)")
    out = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(person.glob("*.jpg"))
        if len(files) >= 2:
            out += [Sample(str(f), person.name) for f in files]
    return out


def prepare(cfg: LoadConfig) -> dict:
    """Model, index and query list under cfg.out (reused when the settings match)."""
    out = Path(cfg.out)
    stamp = out / "prepared.json"
    key = {k: v for k, v in asdict(cfg).items()
           if k in ("data", "arch", "input_size", "train_steps", "index_images", "query_images")}
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return json.loads(stamp.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    samples = lfw_samples(Path(cfg.data))
    rng = np.random.default_rng(0)
    people = sorted({s.label for s in samples})
    rng.shuffle(people)
    half = set(people[: len(people) // 2])  # train on one half of the people, serve the other
    train_s = [s for s in samples if s.label in half]
    serve_s = [s for s in samples if s.label not in half]
    pick = rng.choice(len(serve_s), cfg.index_images + cfg.query_images, replace=False)
    index_s = [serve_s[i] for i in pick[: cfg.index_images]]
    query_s = [serve_s[i] for i in pick[cfg.index_images:]]
    t0 = time.perf_counter()
    ckpt = train(TrainConfig(data="lfw", out=str(out / "model"), arch=cfg.arch,
                             input_size=cfg.input_size, embedding_dim=128, loss="triplet",
                             p=8, k=2, epochs=1, steps_per_epoch=cfg.train_steps,
                             num_workers=0, val_fraction=0.05, name=f"lfw-{cfg.arch}"),
                 samples=train_s)
    train_s_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = str(Path(cfg.data) / "lfw" / "lfw-deepfunneled")
    catalog = f"sqlite:///{(out / 'catalog.db').resolve()}"
    build_index(BuildConfig(checkpoint=str(ckpt), images=images, index_root=str(out / "index"),
                            catalog_url=catalog, num_workers=0, progress=False, factory="Flat"),
                samples=index_s)
    info = {"key": key, "checkpoint": str(ckpt.resolve()), "catalog": catalog,
            "index_root": str((out / "index").resolve()), "queries": str(out / "queries.txt"),
            "train_seconds": train_s_time, "index_seconds": time.perf_counter() - t0}
    (out / "queries.txt").write_text("\n".join(s.path for s in query_s) + "\n")
    stamp.write_text(json.dumps(info, indent=2))
    return info


def forward_limit(checkpoint: str, queries: list[str], *, batch: int,
                  seconds: float) -> tuple[float, float]:
    """The model's batched forward pass on real, preprocessed query images: (images per
    second, images per CPU-second of this process)."""
    emb = Embedder.from_checkpoint(checkpoint)
    x = torch.stack([emb.transform(decode_image(Path(q).read_bytes())) for q in queries[:batch]])
    emb.embed_tensors(x)  # warm-up
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        emb.embed_tensors(x)
        n += len(x)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def limit_now(cfg: LoadConfig, info: dict) -> dict:
    """The limit, measured in a fresh process with the server's thread settings."""
    r = subprocess.run([sys.executable, __file__, "--measure-limit", info["checkpoint"],
                        "--queries", info["queries"], "--max-batch", str(cfg.max_batch),
                        "--limit-seconds", str(cfg.limit_seconds), "--threads", str(cfg.threads)],
                       check=True, capture_output=True, text=True, cwd=REPO, env=CHILD_ENV)
    img_s, img_cpu_s = map(float, r.stdout.strip().splitlines()[-1].split())
    return {"img_s": img_s, "img_cpu_s": img_cpu_s}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in text.splitlines()
                                     if ln and not ln.startswith("#"))}


def locust(target: str, queries: str, users: int, seconds: int, csv_prefix: Path, *,
           rate: float = 0.0) -> dict:
    cmd = [str(Path(sys.executable).parent / "locust"), "-f", str(REPO / "loadtests/locustfile.py"),
           "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
           "--host", target, "--images", queries, "--csv", str(csv_prefix), "--only-summary",
           "--loglevel", "WARNING", "--exit-code-on-error", "0", "--stop-timeout", "30"]
    if rate:
        cmd += ["--rate", str(rate)]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, cwd=REPO, env=CHILD_ENV, stdout=subprocess.DEVNULL)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    locust_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    with open(f"{csv_prefix}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "locust_cpu_s": locust_cpu,
            "rps": float(row["Requests/s"]), "p50": float(row["50%"]),
            "p95": float(row["95%"]), "p99": float(row["99%"])}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish_same_model_version(index_root: str) -> str:
    """Publish the current index again as a new version (what a reindex with the same model
    does); the server's CURRENT watcher picks it up."""
    v = load_index_version(index_root)
    m = replace(v.manifest, version=new_version_name(), created_at="")
    publish_index_version(index_root, v.index, m)
    return m.version


def run(cfg: LoadConfig) -> dict:
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    torch.set_num_threads(cfg.threads)
    info = prepare(cfg)
    limits = [limit_now(cfg, info)]
    port, mport = free_port(), free_port()
    out = Path(cfg.out)
    (out / "serve.toml").write_text(
        f'[serve]\ncheckpoint = "{info["checkpoint"]}"\nindex_root = "{info["index_root"]}"\n'
        f'catalog_url = "{info["catalog"]}"\nport = {port}\nmetrics_port = {mport}\n'
        f'max_batch = {cfg.max_batch}\nmax_wait_ms = {cfg.max_wait_ms}\n'
        f'torch_threads = {cfg.threads}\ndecode_workers = {cfg.threads}\nwatch_seconds = 1.0\n')
    server = subprocess.Popen([sys.executable, "-m", "imgsim.cli", "serve", "--config",
                               str(out / "serve.toml")], cwd=REPO, env=CHILD_ENV,
                              stdout=open(out / "server.log", "w"), stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    rows, swap = [], {}
    try:
        with SimilarityClient(target, timeout=5) as c:
            deadline = time.time() + 300
            while time.time() < deadline:
                try:
                    if c.health() == "SERVING":
                        break
                except Exception:
                    pass
                time.sleep(0.5)
            else:
                raise SystemExit("server did not become SERVING; see server.log")
            locust(target, info["queries"], max(cfg.users), cfg.warmup_seconds, out / "warmup")
            # the limit is measured between the levels (the server idles meanwhile), and each
            # level is compared with the mean of the measurements just before and after it:
            # the machine is shared, so its speed drifts during the run
            for users in cfg.users:
                rows.append(measure(cfg, c, target, info, mport, users, server_pid=server.pid,
                                    swap=users == max(cfg.users), swap_log=swap))
                limits.append(limit_now(cfg, info))
                rows[-1]["limit"] = _mean_limit(limits[-2:])
            # saturation: the most users (the batcher runs full batches); half load: half its
            # request rate, paced over half_users users
            rate = 0.5 * rows[-1]["rps"]
            half = measure(cfg, c, target, info, mport, cfg.half_users, server_pid=server.pid,
                           rate=rate)
            half["mode"] = f"paced {rate:.1f} req/s"
            limits.append(limit_now(cfg, info))
            half["limit"] = _mean_limit(limits[-2:])
            rows.append(half)
            swap["served_after"] = c.describe().index_version
    finally:
        server.terminate()
        server_rc = server.wait(60)
    for r in rows:
        r["ratio"] = r["img_s"] / r["limit"]["img_s"]
        r["cpu_ratio"] = r["img_cpu_s"] / r["limit"]["img_cpu_s"]
    return {"config": asdict(cfg), "prepared": info, "limits": limits, "rows": rows, "swap": swap,
            "server_exit_code": server_rc, "wall_seconds": time.perf_counter() - t_start,
            "load_start": load_start, "load_end": os.getloadavg()}


def _mean_limit(pair: list[dict]) -> dict:
    return {k: sum(x[k] for x in pair) / len(pair) for k in pair[0]}


def measure(cfg: LoadConfig, client: SimilarityClient, target: str, info: dict, mport: int,
            users: int, *, server_pid: int, rate: float = 0.0, swap: bool = False,
            swap_log: dict | None = None):
    before = scrape(mport)
    server_cpu = process_cpu_seconds(server_pid)
    timer = None
    if swap:
        def do_swap():
            swap_log["from"] = client.describe().index_version
            swap_log["published"] = publish_same_model_version(info["index_root"])
            swap_log["at_seconds"] = cfg.seconds / 2
        timer = threading.Timer(cfg.seconds / 2, do_swap)
        timer.start()
    t0 = time.perf_counter()
    stats = locust(target, info["queries"], users, cfg.seconds,
                   Path(cfg.out) / f"u{users}{'_paced' if rate else ''}", rate=rate)
    elapsed = time.perf_counter() - t0
    if timer is not None:
        timer.join()
        swap_log["failures_in_run"] = stats["failures"]
        swap_log["served_at_end"] = client.describe().index_version
    after = scrape(mport)
    server_cpu = process_cpu_seconds(server_pid) - server_cpu
    key = 'imgsim_batch_size_{}{{batcher="embed"}}'
    images = after[key.format("sum")] - before[key.format("sum")]
    batches = after[key.format("count")] - before[key.format("count")]
    n = max(stats["requests"], 1)
    return {"users": users, "mode": "closed loop", **stats,
            "img_s": images / elapsed, "mean_batch": images / max(batches, 1),
            "img_cpu_s": images / max(server_cpu + stats["locust_cpu_s"], 1e-9),
            "server_cpu_ms": 1e3 * server_cpu / n, "locust_cpu_ms": 1e3 * stats["locust_cpu_s"] / n,
            "cpu_busy": (server_cpu + stats["locust_cpu_s"]) / elapsed}


def table(res: dict) -> str:
    cfg = res["config"]
    lim_s = ", ".join(f"{x['img_s']:.1f}" for x in res["limits"])
    lim_cpu = ", ".join(f"{x['img_cpu_s']:.1f}" for x in res["limits"])
    lines = [
        f"limit = in-process batched forward of the same model (batch {cfg['max_batch']}, "
        f"{cfg['threads']} threads, fresh process, OMP_WAIT_POLICY="
        f"{CHILD_ENV['OMP_WAIT_POLICY']} like the server), measured before the first level and "
        f"after each: {lim_s} img/s; per CPU-second: {lim_cpu} img",
        "",
        "| users | load | req/s | img/s | limit img/s | img/s / limit | img per CPU-s "
        "(server+locust) / limit's | mean batch | p50 ms | p95 ms | p99 ms | failures / requests "
        "| CPU ms/req server, locust | cores busy |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['users']} | {r['mode']} | {r['rps']:.1f} | {r['img_s']:.1f} | "
                     f"{r['limit']['img_s']:.1f} | {r['ratio']:.2f} | {r['cpu_ratio']:.2f} | "
                     f"{r['mean_batch']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | "
                     f"{r['failures']} / {r['requests']} | {r['server_cpu_ms']:.0f}, "
                     f"{r['locust_cpu_ms']:.0f} | {r['cpu_busy']:.2f} |")
    sat = [r for r in res["rows"] if r["mode"] == "closed loop"][-1]
    half = res["rows"][-1]
    s = res["swap"]
    fails = sum(r["failures"] for r in res["rows"])
    swapped = s.get("served_at_end") == s.get("published")
    ok = "met" if min(sat["ratio"], sat["cpu_ratio"]) >= 0.85 else (
        "met on one measure" if max(sat["ratio"], sat["cpu_ratio"]) >= 0.85 else "MISSED")
    lines += [
        "",
        f"hot swap: during the {max(cfg['users'])}-user run, published {s.get('published')} at "
        f"t={s.get('at_seconds', 0):.0f}s (served before: {s.get('from')}); served at the end "
        f"of the run: {s.get('served_at_end')}; failures in that run: {s.get('failures_in_run')}",
        "",
        f"- saturation ({sat['users']} users, mean batch {sat['mean_batch']:.1f}) >= 0.85 x "
        f"limit: {sat['ratio']:.2f} x in images/s, {sat['cpu_ratio']:.2f} x in images per "
        f"CPU-second ({ok})",
        f"- at half load p99 <= 3 x p50: p99 {half['p99']:.0f} ms vs 3 x {half['p50']:.0f} ms "
        f"({'met' if half['p99'] <= 3 * half['p50'] else 'MISSED'})",
        f"- zero failures over the run: {fails} ({'met' if fails == 0 else 'MISSED'})",
        f"- hot swap fails no request: {'met' if swapped and s.get('failures_in_run') == 0 else 'MISSED'}"
        f" (swapped: {swapped})",
        "",
        f"model {cfg['arch']}@{cfg['input_size']} trained {cfg['train_steps']} steps on half of "
        f"LFW's people; index: {cfg['index_images']} LFW images of the other half (Flat); "
        f"queries: {cfg['query_images']} held-out LFW JPEGs; {cfg['seconds']} s per level; "
        f"max_batch {cfg['max_batch']}, max_wait {cfg['max_wait_ms']} ms",
        f"machine: {os.cpu_count()} cores shared with other work (load average "
        f"{res['load_start'][0]:.1f} at start, {res['load_end'][0]:.1f} at end); locust runs on "
        f"the same cores as the server; wall time {res['wall_seconds'] / 60:.1f} min "
        f"(training {res['prepared']['train_seconds']:.0f} s and indexing "
        f"{res['prepared']['index_seconds']:.0f} s when not cached)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(data_root()))
    p.add_argument("--out", default="runs/service_load")
    p.add_argument("--arch", default=LoadConfig.arch)
    p.add_argument("--input-size", type=int, default=LoadConfig.input_size)
    p.add_argument("--users", default=",".join(map(str, LoadConfig.users)))
    p.add_argument("--seconds", type=int, default=LoadConfig.seconds, help="per load level")
    p.add_argument("--max-batch", type=int, default=LoadConfig.max_batch)
    p.add_argument("--max-wait-ms", type=float, default=LoadConfig.max_wait_ms)
    p.add_argument("--train-steps", type=int, default=LoadConfig.train_steps)
    p.add_argument("--index-images", type=int, default=LoadConfig.index_images)
    p.add_argument("--limit-seconds", type=float, default=LoadConfig.limit_seconds)
    p.add_argument("--threads", type=int, default=LoadConfig.threads)
    p.add_argument("--half-users", type=int, default=LoadConfig.half_users)
    p.add_argument("--measure-limit", metavar="CHECKPOINT",
                   help="(internal) print the forward limit of CHECKPOINT and exit")
    p.add_argument("--queries", help="(internal) query list for --measure-limit")
    a = p.parse_args(argv)
    if a.measure_limit:
        torch.set_num_threads(a.threads)
        queries = [q for q in Path(a.queries).read_text().splitlines() if q]
        print(*forward_limit(a.measure_limit, queries, batch=a.max_batch,
                             seconds=a.limit_seconds))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = LoadConfig(data=a.data, out=a.out, arch=a.arch, input_size=a.input_size,
                     users=tuple(int(u) for u in a.users.split(",")), seconds=a.seconds,
                     max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
                     train_steps=a.train_steps, index_images=a.index_images,
                     limit_seconds=a.limit_seconds, threads=a.threads, half_users=a.half_users)
    res = run(cfg)
    (Path(cfg.out) / "results.json").write_text(json.dumps(res, indent=2, default=str))
    text = table(res)
    (Path(cfg.out) / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
