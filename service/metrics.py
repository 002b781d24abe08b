"""Prometheus metrics of a server (own registry, so several servers can live in one process)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

from training.face.stages import FACE_STAGES, FaceStageStats

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .15, .25, .4, .6, 1, 1.5, 2.5, 5,
                   10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("imgsim_requests", "RPCs answered, by method and status code",
                                ["method", "code"], registry=r)
        self.latency = Histogram("imgsim_request_seconds", "RPC latency by method and status code",
                                 ["method", "code"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("imgsim_batch_size", "items per micro-batch, by batcher",
                                    ["batcher"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("imgsim_queue_depth", "items waiting in a batcher's queue",
                                 ["batcher"], registry=r)
        self.index_size = Gauge("imgsim_index_size", "vectors in the served index version",
                                ["collection"], registry=r)
        self.swaps = Counter("imgsim_index_swaps", "index version swaps by outcome",
                             ["collection", "outcome"], registry=r)
        self.in_flight = Gauge("imgsim_in_flight_requests", "RPCs being handled", registry=r)
        r.register(FaceStageCollector(FACE_STAGES))
        self._http = None

    # -- observers the core calls ---------------------------------------------------------
    def on_batch(self, name: str, size: int, depth: int) -> None:
        self.batch_size.labels(name).observe(size)
        self.queue_depth.labels(name).set(depth)

    def on_swap(self, collection: str, outcome: str, version: str) -> None:
        self.swaps.labels(collection, outcome).inc()

    def track_index(self, collection: str, size: Callable[[], float]) -> None:
        """Report the size of a collection's index as it is when scraped."""
        self.index_size.labels(collection).set_function(size)

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method, code).observe(seconds)

    # -- HTTP endpoint --------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Start /metrics on its own HTTP port; returns the bound port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = self._http.server_port
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class FaceStageCollector:
    """The face path's stages (detect, align, embed) as counters, read from the process-wide
    FaceStageStats when scraped: seconds and images per stage, images without a face by what
    the face step did ("fallback": embedded the fixed crop, "refused": INVALID_ARGUMENT).
    Process-wide: servers sharing a process report the same totals."""

    def __init__(self, stats: FaceStageStats) -> None:
        self.stats = stats

    def collect(self):
        stages, misses = self.stats.snapshot()
        seconds = CounterMetricFamily("imgsim_face_stage_seconds",
                                      "time spent in each face stage", labels=["stage"])
        images = CounterMetricFamily("imgsim_face_stage_images",
                                     "images through each face stage", labels=["stage"])
        for name, t in stages.items():
            seconds.add_metric([name], t.seconds)
            images.add_metric([name], t.images)
        missed = CounterMetricFamily("imgsim_face_misses", "images in which no face was found, "
                                     "by what the face step did", labels=["outcome"])
        for outcome, n in misses.items():
            missed.add_metric([outcome], n)
        return [seconds, images, missed]
