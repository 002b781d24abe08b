"""HTTP/JSON search against gRPC search on the same server, side by side, and the web console
timed in a real browser.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/http_vs_grpc.py [--out runs/http_vs_grpc]

Builds (once, cached under --out) the demo model and index of `make run` (sklearn's digits),
starts `imgsim serve` in a subprocess with gRPC and HTTP on loopback, and sends the same
held-out query images (Search, k=10, image uploaded) through each protocol:

* one user: sequential requests, p50/p95 latency (rounds alternate gRPC and HTTP, so that
  drift on a shared machine hits both);
* saturation: --users client processes at once, requests/s, and the CPU each request cost
  the server and the clients (on a small machine they share the cores).

HTTP clients send each image's multipart form encoded once (http.client, keep-alive) and
parse every JSON answer; gRPC clients are service.client's.

Then Debian's chromium (Playwright) loads the console and runs searches by upload: the first
page load (to the first page of the collection shown) and a search round trip (drop to every
thumbnail of the gallery shown), medians of --browser-runs. Prints one table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD_ENV = {**os.environ, "PYTHONPATH": str(REPO),
             "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- load generators (one per client process) ---------------------------------------------
def _grpc_worker(target: str, images: list[bytes], seconds: float, start: float, out) -> None:
    from service.client import SimilarityClient

    lat = []
    with SimilarityClient(target, timeout=60) as c:
        c.search(images[0], 10)  # connect outside the timed window
        while time.time() < start:
            time.sleep(0.001)
        i, end, c0 = 0, start + seconds, time.process_time()
        while time.time() < end:
            t0 = time.perf_counter()
            if len(c.search(images[i % len(images)], 10).hits) != 10:
                raise RuntimeError("short answer")
            lat.append(time.perf_counter() - t0)
            i += 1
    out.put((lat, time.process_time() - c0))


def _http_worker(url: str, images: list[bytes], seconds: float, start: float, out) -> None:
    """A keep-alive connection (http.client) sending each image's multipart form, encoded once
    by httpx: on two cores the load generator shares the CPUs with the server, and a client
    that re-encoded every form in Python would measure itself (gRPC's client is C)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    import httpx

    forms = []
    for im in images:
        req = httpx.Request("POST", url + "/v1/search", files={"image": ("q.png", im)},
                            data={"k": "10"})
        forms.append((req.read(), req.headers["content-type"]))
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)

    def search(i: int) -> None:
        body, ctype = forms[i % len(forms)]
        conn.request("POST", "/v1/search", body, {"content-type": ctype})
        r = conn.getresponse()
        answer = json.loads(r.read())
        if r.status != 200 or len(answer["hits"]) != 10:
            raise RuntimeError(f"HTTP {r.status}: {answer}")

    lat = []
    search(0)  # connect outside the timed window
    while time.time() < start:
        time.sleep(0.001)
    i, end, c0 = 0, start + seconds, time.process_time()
    while time.time() < end:
        t0 = time.perf_counter()
        search(i)
        lat.append(time.perf_counter() - t0)
        i += 1
    out.put((lat, time.process_time() - c0))


def run_load(kind: str, address: str, images: list[bytes], users: int,
             seconds: float) -> tuple[list[float], float]:
    """Every request's latency (s) of ``users`` client processes over ``seconds``, and the
    CPU seconds the clients spent."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 3.0 + 0.3 * users  # every process imported and connected by then
    target = _grpc_worker if kind == "grpc" else _http_worker
    procs = [ctx.Process(target=target, args=(address, images, seconds, start, out))
             for _ in range(users)]
    for p in procs:
        p.start()
    answers = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    return [x for lat, _ in answers for x in lat], sum(c for _, c in answers)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: the server's cost of the requests, which
    other work on a shared machine slows but does not add to."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# -- the browser ----------------------------------------------------------------------------
def browser_timings(url: str, queries: list[Path], runs: int) -> tuple[list[float], list[float]]:
    from playwright.sync_api import sync_playwright

    from tests.service.web.conftest import chromium_path

    exe = chromium_path()
    if exe is None:
        raise SystemExit("no chromium: apt-get install chromium")
    loads, searches = [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        for i in range(runs):
            # a cold tab; the policy bypassed only so that the wait below may evaluate
            context = b.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
            page = context.new_page()
            t0 = time.perf_counter()
            page.goto(url + "/")
            page.wait_for_selector("#browse-grid .card", state="attached")
            loads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            page.set_input_files("#search-file", str(queries[i % len(queries)]))
            page.wait_for_selector("#search-results .card")
            page.wait_for_function("[...document.querySelectorAll('#search-results img.thumb')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            searches.append(time.perf_counter() - t0)
            context.close()
        b.close()
    return loads, searches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/http_vs_grpc")
    ap.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="alternating gRPC/HTTP rounds")
    ap.add_argument("--users", type=int, default=8, help="client processes at saturation")
    ap.add_argument("--browser-runs", type=int, default=5)
    args = ap.parse_args()

    from service.demo import prepare_demo

    demo = prepare_demo(Path(args.out) / "demo")
    images = [q.read_bytes() for q in demo.queries]
    port, http_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "imgsim.cli", "serve", "--checkpoint", str(demo.checkpoint),
         "--index-root", str(demo.index_root), "--catalog", demo.catalog_url,
         "--port", str(port), "--http-port", str(http_port), "--watch-seconds", "0"],
        env={**CHILD_ENV, "IMGSIM_SERVE_JOB_THREADS": "0"}, stdout=subprocess.DEVNULL)
    url, target = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.3)
        one = {"grpc": [], "http": []}
        sat = {"grpc": [], "http": []}
        cpu = {"grpc": [], "http": []}  # server CPU ms per request at saturation
        client_cpu = {"grpc": [], "http": []}
        for _ in range(args.rounds):
            for kind, address in (("grpc", target), ("http", url)):
                one[kind].append(run_load(kind, address, images, 1, args.seconds)[0])
            for kind, address in (("http", url), ("grpc", target)):
                c0 = cpu_seconds(server.pid)
                lat, ccpu = run_load(kind, address, images, args.users, args.seconds)
                client_cpu[kind].append(ccpu / len(lat) * 1e3)
                # the warm-up requests of each client count too: one each
                cpu[kind].append((cpu_seconds(server.pid) - c0) / (len(lat) + args.users) * 1e3)
                sat[kind].append(len(lat) / args.seconds)
        loads, searches = browser_timings(url, demo.queries, args.browser_runs)
    finally:
        server.terminate()
        server.wait(30)

    def p50(kind):
        return statistics.median(pct(r, 0.5) for r in one[kind]) * 1e3

    def p95(kind):
        return statistics.median(pct(r, 0.95) for r in one[kind]) * 1e3

    rps = {k: statistics.median(v) for k, v in sat.items()}
    print(f"\nSearch (k=10, image uploaded), demo digits index ({len(images)} held-out queries), "
          f"{args.rounds} alternating rounds of {args.seconds:g} s, server in its own process\n")
    print("| measure | gRPC | HTTP/JSON | HTTP / gRPC | target |")
    print("|---|---|---|---|---|")
    print(f"| one user, p50 latency (ms) | {p50('grpc'):.2f} | {p50('http'):.2f} | "
          f"{p50('http') / p50('grpc'):.2f}x | within 1.3x |")
    print(f"| one user, p95 latency (ms) | {p95('grpc'):.2f} | {p95('http'):.2f} | "
          f"{p95('http') / p95('grpc'):.2f}x | |")
    print(f"| {args.users} users, requests/s (saturation) | {rps['grpc']:.0f} | "
          f"{rps['http']:.0f} | {rps['http'] / rps['grpc']:.2f}x | >= 0.8x |")
    cpu_ms = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"| {args.users} users, server CPU per request (ms) | {cpu_ms['grpc']:.2f} | "
          f"{cpu_ms['http']:.2f} | {cpu_ms['http'] / cpu_ms['grpc']:.2f}x | |")
    ccpu = {k: statistics.median(v) for k, v in client_cpu.items()}
    print(f"| {args.users} users, client CPU per request (ms) | {ccpu['grpc']:.2f} | "
          f"{ccpu['http']:.2f} | {ccpu['http'] / ccpu['grpc']:.2f}x | |")
    print(f"| console first load, to the first page of the collection shown (ms, median of "
          f"{len(loads)}) | | {statistics.median(loads) * 1e3:.0f} | | < 1000 |")
    print(f"| console search round trip, upload to every thumbnail shown (ms, median of "
          f"{len(searches)}) | | {statistics.median(searches) * 1e3:.0f} | | < 1000 |")
    print(f"\nper round: requests/s gRPC {[round(x) for x in sat['grpc']]}, HTTP "
          f"{[round(x) for x in sat['http']]}; console loads (ms) "
          f"{[round(x * 1e3) for x in loads]}, searches (ms) {[round(x * 1e3) for x in searches]}")


if __name__ == "__main__":
    main()
