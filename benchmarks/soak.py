"""Soak: a long paced locust run against a real server on loopback; drift per minute.

Starts `imgsim serve` on 127.0.0.1 over a tiny digits index (benchmarks/reliability_common.py),
runs loadtests/locustfile.py headless (Search 3 : Verify 1 : Embed 1) at a fixed total rate for
--minutes, and prints per minute: requests, failures, p50/p99 latency, server RSS and the load
average (the box may be shared). Paced well below saturation, so latency drift or RSS growth
is the server's, not a queue building up.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/soak.py --minutes 10 --rate 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_common import CHILD_ENV, REPO, ServerProcess, prepare  # noqa: E402


def percentile(ms: list[float], q: float) -> float:
    return float(np.percentile(ms, q)) if ms else float("nan")


def per_minute(log: Path, t0: float, minutes: int, samples: dict[int, dict]) -> list[dict]:
    rows = [{"minute": m + 1, "ms": [], "failures": 0, **samples.get(m + 1, {})}
            for m in range(minutes)]
    for line in log.read_text().splitlines():
        t, _name, ms, failed = line.split()
        m = int((float(t) - t0) // 60)
        if 0 <= m < minutes:
            rows[m]["ms"].append(float(ms))
            rows[m]["failures"] += int(failed)
    for r in rows:
        ms = r.pop("ms")
        r.update(requests=len(ms), p50=percentile(ms, 50), p99=percentile(ms, 99))
    return rows


def table(res: dict) -> str:
    out = ["| minute | requests | failures | p50 ms | p99 ms | server RSS MiB | load avg |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["minutes"]:
        out.append(f"| {r['minute']} | {r['requests']} | {r['failures']} | {r['p50']:.1f} | "
                   f"{r['p99']:.1f} | {r.get('rss_mb', float('nan')):.0f} | "
                   f"{r.get('load', float('nan')):.2f} |")
    t = res["total"]
    out.append(f"| all | {t['requests']} | {t['failures']} | {t['p50']:.1f} | {t['p99']:.1f} | "
               f"{res['rss_start_mb']:.0f} -> {res['rss_end_mb']:.0f} | |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/soak")
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--rate", type=float, default=20.0, help="total requests/s")
    p.add_argument("--users", type=int, default=4)
    args = p.parse_args(argv)
    out = Path(args.out)
    ws = prepare(out / "ws")
    log = out / "latency.log"
    log.unlink(missing_ok=True)
    server = ServerProcess(ws, out / "server.log").start()
    samples: dict[int, dict] = {}
    stop = threading.Event()
    try:
        rss_start = server.rss_mb()
        t0 = time.time()

        def sample() -> None:
            m = 1
            while not stop.wait(max(0.0, t0 + 60 * m - time.time())):
                samples[m] = {"rss_mb": server.rss_mb(), "load": os.getloadavg()[0]}
                m += 1

        threading.Thread(target=sample, daemon=True).start()
        cmd = [str(Path(sys.executable).parent / "locust"), "-f",
               str(REPO / "loadtests/locustfile.py"), "--headless", "-u", str(args.users),
               "-r", str(args.users), "-t", f"{args.minutes * 60}s", "--host", server.target,
               "--images", str(ws.queries), "--rate", str(args.rate), "--latency-log", str(log),
               "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
               "--stop-timeout", "30", "--csv", str(out / "locust")]
        subprocess.run(cmd, check=True, cwd=REPO, env=CHILD_ENV, stdout=subprocess.DEVNULL,
                       timeout=args.minutes * 60 + 120)
        rss_end = server.rss_mb()
        alive = server.alive()
    finally:
        stop.set()
        code = server.stop()
    lines = [ln.split() for ln in log.read_text().splitlines()]
    ms = [float(x[2]) for x in lines]
    res = {"config": vars(args), "rss_start_mb": rss_start, "rss_end_mb": rss_end,
           "alive_at_end": alive, "server_exit_code": code,
           "minutes": per_minute(log, t0, args.minutes, samples),
           "total": {"requests": len(ms), "failures": sum(int(x[3]) for x in lines),
                     "p50": percentile(ms, 50), "p99": percentile(ms, 99)}}
    (out / "soak.json").write_text(json.dumps(res, indent=2))
    print(table(res))
    print(f"server alive at the end: {alive}; exit code after SIGTERM: {code}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
