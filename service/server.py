"""The gRPC server: health checking, reflection, background model loading, graceful SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc
from indexer.catalog import open_catalog
from indexer.versions import load_index_version
from service.core import SimilarityCore
from service.servicer import SimilarityServicer
from training.embedder import Embedder

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SimilarityService"].full_name


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str
    index_root: str
    catalog_url: str
    host: str = "127.0.0.1"
    port: int = 50051
    max_workers: int = 8
    max_message_bytes: int = 16 * 1024 * 1024
    grace_seconds: float = 10.0


def load_core(cfg: ServeConfig) -> SimilarityCore:
    embedder = Embedder.from_checkpoint(cfg.checkpoint)
    return SimilarityCore(embedder, load_index_version(cfg.index_root), open_catalog(cfg.catalog_url))


class Server:
    """A started gRPC server; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, cfg: ServeConfig, *, core: SimilarityCore | None = None) -> None:
        self.cfg = cfg
        self.core: SimilarityCore | None = None
        self.load_error: BaseException | None = None
        opts = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes)]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.max_workers), options=opts)
        pb_grpc.add_SimilarityServiceServicer_to_server(SimilarityServicer(lambda: self.core), self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self.grpc.add_insecure_port(f"{cfg.host}:{cfg.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {cfg.host}:{cfg.port}")
        self.grpc.start()
        self.ready = threading.Event()
        if core is not None:
            self._loaded(core)
        else:
            threading.Thread(target=self._load, daemon=True, name="load-model").start()

    def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def _load(self) -> None:
        try:
            self._loaded(load_core(self.cfg))
        except BaseException as e:  # reported through health and the log; the server stays up
            log.exception("loading model/index failed")
            self.load_error = e
            self.ready.set()

    def _loaded(self, core: SimilarityCore) -> None:
        self.core = core
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving index %s with model %s on port %d",
                 core.index.manifest.version, core.embedder.model_version, self.port)
        self.ready.set()

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within ``grace`` seconds."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc.stop(self.cfg.grace_seconds if grace is None else grace).wait()

    def wait(self) -> None:
        self.grpc.wait_for_termination()


def serve_forever(cfg: ServeConfig) -> None:
    server = Server(cfg)

    def _term(signum, _frame):
        log.info("signal %d: draining and stopping", signum)
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    server.wait()
