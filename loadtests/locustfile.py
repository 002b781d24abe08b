"""Locust gRPC load test: a user mixing Search and Verify with real images.

    locust -f loadtests/locustfile.py --headless -u 8 -r 4 -t 30s --host 127.0.0.1:50051 \
        --images var/demo/queries

Targets loopback only; bounded by -t.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc
from locust import User, between, events, task

from service.client import SimilarityClient


@events.init_command_line_parser.add_listener
def _args(parser):
    parser.add_argument("--images", default="var/demo/queries", help="folder of query images")


class GrpcUser(User):
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        folder = Path(self.environment.parsed_options.images)
        self.images = [p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()]
        if not self.images:
            raise RuntimeError(f"no images under {folder}")
        self.client = SimilarityClient(self.host, timeout=10)

    def on_stop(self) -> None:
        self.client.close()

    def _call(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        exc, size = None, 0
        try:
            size = fn().ByteSize()
        except grpc.RpcError as e:
            exc = e
        events.request.fire(request_type="grpc", name=name, response_time=(time.perf_counter() - t0) * 1000,
                            response_length=size, exception=exc, context={})

    @task(3)
    def search(self) -> None:
        self._call("Search", lambda: self.client.search(random.choice(self.images), 10))

    @task(1)
    def verify(self) -> None:
        a, b = random.sample(self.images, 2)
        self._call("Verify", lambda: self.client.verify(a, b))
