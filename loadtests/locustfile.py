"""Locust gRPC load test: users mixing Search (3), Verify (1) and Embed (1) with real images.

Against a running server, loopback only, bounded by -t:

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 16 -r 16 -t 60s \\
        --host 127.0.0.1:50051 --images var/demo/queries

--images is a folder (searched recursively) or a text file with one image path per line.
--rate R paces the users to R requests/second in total (locust's constant_throughput per
user); without it each user sends its next request as soon as the last one is answered.
--api-key and --tls-ca talk to a server that requires keys or TLS.
--latency-log FILE appends one line per request (unix time, name, ms, 0/1 failed), for
per-minute percentiles over a long run (benchmarks/soak.py); locust's own history holds
only a rolling 10-second window.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent
from locust import User, constant_throughput, events, task

# locust runs users as gevent greenlets: make gRPC's blocking calls yield to the event loop,
# or one in-flight call would stall every user of the process
grpc_gevent.init_gevent()

import grpc  # noqa: E402

from service.client import SimilarityClient  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}


@events.init_command_line_parser.add_listener
def _args(parser):
    parser.add_argument("--images", default="var/demo/queries",
                        help="folder of query images, or a file listing image paths")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="total requests/second over all users (0: as fast as answered)")
    parser.add_argument("--k", type=int, default=10, help="hits per Search")
    parser.add_argument("--api-key", default="", help="API key, if the server requires one")
    parser.add_argument("--tls-ca", default="", help="CA certificate (PEM) for a TLS server")
    parser.add_argument("--grpc-timeout", type=float, default=30.0, help="per-call deadline (s)")
    parser.add_argument("--latency-log", default="",
                        help="append 'time name ms failed' per request to this file")


_LOG: list = []  # the open latency log, if any (one per process)


@events.test_start.add_listener
def _open_latency_log(environment, **_kw):
    path = environment.parsed_options.latency_log
    if path and not _LOG:
        _LOG.append(open(path, "a", buffering=1))


@events.request.add_listener
def _log_latency(name, response_time, exception, **_kw):
    if _LOG:
        _LOG[0].write(f"{time.time():.3f} {name} {response_time:.2f} {int(exception is not None)}\n")


def load_images(spec: str) -> list[bytes]:
    p = Path(spec)
    if p.is_file():
        paths = [Path(line.strip()) for line in p.read_text().splitlines() if line.strip()]
    else:
        paths = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise RuntimeError(f"need at least 2 images under {spec}")
    return [f.read_bytes() for f in paths]


_IMAGES: dict[str, list[bytes]] = {}


class GrpcUser(User):
    def wait_time(self) -> float:
        rate = self.environment.parsed_options.rate
        if rate <= 0:
            return 0.0
        users = max(1, self.environment.runner.user_count if self.environment.runner else 1)
        if getattr(self, "_paced_users", None) != users:
            self._paced_users, self._pace = users, constant_throughput(rate / users)
        return self._pace(self)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        if opts.images not in _IMAGES:  # read once per process, shared by all users
            _IMAGES[opts.images] = load_images(opts.images)
        self.images = _IMAGES[opts.images]
        self.k = opts.k
        self.client = SimilarityClient(self.host, timeout=opts.grpc_timeout,
                                       api_key=opts.api_key or None,
                                       tls_ca=opts.tls_ca or None)

    def on_stop(self) -> None:
        self.client.close()

    def _call(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        exc, size = None, 0
        try:
            size = fn().ByteSize()
        except grpc.RpcError as e:
            exc = e
        events.request.fire(request_type="grpc", name=name,
                            response_time=(time.perf_counter() - t0) * 1000,
                            response_length=size, exception=exc, context={})

    @task(3)
    def search(self) -> None:
        self._call("Search", lambda: self.client.search(random.choice(self.images), self.k))

    @task(1)
    def verify(self) -> None:
        a, b = random.sample(self.images, 2)
        self._call("Verify", lambda: self.client.verify(a, b))

    @task(1)
    def embed(self) -> None:
        self._call("Embed", lambda: self.client.embed_response([random.choice(self.images)]))
