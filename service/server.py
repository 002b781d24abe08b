"""The gRPC server: health, reflection, API keys, TLS, metrics, hot swaps, graceful SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc
from indexer.catalog import DEFAULT_COLLECTION, open_catalog
from indexer.catalog import collections as catalog_collections
from indexer.stores import open_vector_store, parse_store_spec
from indexer.versions import load_index_version
from service.auth import Authenticator
from service.catalogue_servicer import register_catalog_service
from service.config import (  # noqa: F401  (ServeConfig, load_serve_config: public here too)
    ServeConfig,
    load_serve_config,
    require_catalog,
)
from service.core import CoreObserver, SimilarityCore
from service.hosting import ServicerRegistrar
from service.interceptors import MalformedRequests
from service.jobs.server import register_job_service
from service.metrics import Metrics
from service.mutations import recover_interrupted_change
from service.servicer import SimilarityServicer
from service.store import ensure_service_tables
from training.models.embedder import Embedder

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SimilarityService"].full_name

def _similarity(grpc_server: grpc.Server, server: Server) -> str:
    pb_grpc.add_SimilarityServiceServicer_to_server(
        SimilarityServicer(lambda: server.core, authenticator=server.authenticator,
                           metrics=server.metrics), grpc_server)
    return SERVICE_NAME


# A registrar (service.hosting.ServicerRegistrar) adds one gRPC service to the server and
# returns its full name (for reflection and health). Packages add theirs here, e.g. the offline
# jobs' JobService; cleanup to run when the server stops goes into ``server.stop_hooks``.
SERVICER_REGISTRARS: list[ServicerRegistrar] = [_similarity, register_job_service,
                                                 register_catalog_service]


def load_core(cfg: ServeConfig, *, observer: CoreObserver | None = None) -> SimilarityCore:
    if parse_store_spec(cfg.vector_store)[0] != "faiss":
        return _load_store_core(cfg, observer=observer)
    embedder = Embedder.from_checkpoint(cfg.checkpoint)
    sessions = open_catalog(cfg.catalog_url)
    for root in (cfg.index_root, *cfg.extra_index_roots):  # a change killed mid-publish
        recover_interrupted_change(root, sessions, keep=cfg.keep_versions)
    extra = [load_index_version(root) for root in cfg.extra_index_roots]
    return SimilarityCore(embedder, load_index_version(cfg.index_root),
                          sessions, extra_indexes=extra,
                          options=cfg.core_options(), observer=observer)


def _load_store_core(cfg: ServeConfig, *, observer: CoreObserver | None) -> SimilarityCore:
    """A core over a shared vector store (Milvus): no FAISS index is loaded; the collections
    are ``cfg.collections``, else every catalogue collection the store has published."""
    store = open_vector_store(cfg.vector_store)  # OSError: unreachable, ValueError: no pymilvus
    try:
        embedder = Embedder.from_checkpoint(cfg.checkpoint)
        sessions = open_catalog(cfg.catalog_url)
        names = list(cfg.collections)
        if not names:
            with sessions() as s:
                names = [c.name for c in catalog_collections(s)]
            names = [n for n in names if _published(store, n)]
            names.sort(key=lambda n: n != DEFAULT_COLLECTION)  # the default one first
        missing = [n for n in names if not _published(store, n)]
        if missing or not names:
            raise ValueError(
                f"vector store {cfg.vector_store} has no published version of "
                f"{', '.join(map(repr, missing)) if missing else 'any catalogue collection'}; "
                "fill it with `imgsim reindex --vector-store ...` or `imgsim store publish`")
        return SimilarityCore(embedder, None, sessions, options=cfg.core_options(),
                              observer=observer, store=store, stored_collections=names,
                              index_root=cfg.index_root)
    except BaseException:
        store.close()
        raise


def _size(live) -> float:
    """A collection's vector count for /metrics; NaN while a store does not answer (a scrape
    must not fail with it)."""
    try:
        return float(live.count())
    except Exception:
        return float("nan")


def _published(store, collection: str) -> bool:
    try:
        store.describe(collection)
    except LookupError:
        return False
    return True


def _set_threads(cfg: ServeConfig) -> None:
    import faiss
    import torch

    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.faiss_threads > 0:  # FAISS's OpenMP threads would fight torch's for the cores
        faiss.omp_set_num_threads(cfg.faiss_threads)


class Server:
    """A started gRPC server; ``port`` is the bound port (useful with port 0).

    Health reports NOT_SERVING until the model and index are loaded (in a background thread
    unless ``core`` is given) and again while stopping."""

    def __init__(self, cfg: ServeConfig, *, core: SimilarityCore | None = None,
                 registrars: Sequence[ServicerRegistrar] | None = None) -> None:
        self.cfg = cfg
        self.core: SimilarityCore | None = None
        self.load_error: BaseException | None = None
        self.ready = threading.Event()
        self.stop_hooks: list[Callable[[], None]] = []  # run by stop(), after the drain
        _set_threads(cfg)
        self.metrics = Metrics()
        self.metrics_port = (self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
                             if cfg.metrics_port >= 0 else None)
        self.authenticator = None
        if cfg.require_api_key:
            sessions = open_catalog(cfg.catalog_url)
            ensure_service_tables(sessions)
            self.authenticator = Authenticator(sessions, cache_seconds=cfg.auth_cache_seconds)
        # so_reuseport off: a second server on a busy port must fail to bind, not silently
        # share the port with (and steal half the connections of) an older server
        opts = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0)]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.max_workers,
                                                           thread_name_prefix="grpc"),
                                options=opts, maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
                                interceptors=[MalformedRequests(self.metrics)])
        names = [register(self.grpc, self)
                 for register in (SERVICER_REGISTRARS if registrars is None else registrars)]
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self._service_names = ["", *names]
        reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.grpc)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_cert:
                creds = grpc.ssl_server_credentials(
                    [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
                self.port = self.grpc.add_secure_port(address, creds)
            else:
                self.port = self.grpc.add_insecure_port(address)
        except RuntimeError:  # grpc raises RuntimeError("Failed to bind ...")
            self.port = 0
        if self.port == 0:
            self.stop(0)  # metrics endpoint and registrars' workers were already started
            raise OSError(f"cannot bind {address} (is another server running there?)")
        self.grpc.start()
        self.http = None  # the HTTP API and console beside gRPC (cfg.http_port; 0: off)
        try:
            from service.web.serve import start_http

            self.http = start_http(self)
        except OSError:
            self.stop(0)
            raise
        if self.http is not None:
            self.stop_hooks.insert(0, self.http.stop)
        if core is not None:
            self._loaded(core)
        else:
            threading.Thread(target=self._load, daemon=True, name="load-model").start()

    def _set_health(self, status) -> None:
        for name in self._service_names:
            self.health.set(name, status)

    def _load(self) -> None:
        try:
            self._loaded(load_core(self.cfg, observer=self.metrics))
        except BaseException as e:  # reported through health and the log; the server stays up
            if isinstance(e, OSError | ValueError):  # a bad setting or file: its message says
                log.error("loading model/index failed: %s", e)
            else:
                log.exception("loading model/index failed")
            self.load_error = e
            self.ready.set()

    def _loaded(self, core: SimilarityCore) -> None:
        for name, live in core.lives.items():
            self.metrics.track_index(name, lambda live=live: _size(live))
        core.watch(self.cfg.watch_seconds)
        self.core = core
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s with model %s on port %d%s",
                 ", ".join(f"{c}@{lv.version_name}" for c, lv in core.lives.items()),
                 core.embedder.model_version, self.port, " (TLS)" if self.cfg.tls_cert else "",
                 extra={"port": self.port, "model_version": core.embedder.model_version})
        self.ready.set()

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``
        seconds, then stop the batchers, watchers and the metrics endpoint."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc.stop(self.cfg.grace_seconds if grace is None else grace).wait()
        for hook in self.stop_hooks:
            try:
                hook()
            except Exception:
                log.exception("a stop hook failed")
        if self.core is not None:
            self.core.close()
        self.metrics.close()
        log.info("stopped")

    def wait(self) -> None:
        self.grpc.wait_for_termination()


class StartupError(Exception):
    """The server could not load what it serves (model, index or catalogue) and stopped."""


def serve_forever(cfg: ServeConfig) -> None:
    """Serve until SIGTERM or SIGINT, then drain gracefully and return. A model, index or
    catalogue that cannot be loaded stops the server with StartupError (a process that
    answered NOT_SERVING forever would look alive to everything but its health check);
    a load still in progress is waited for."""
    require_catalog(cfg.catalog_url)  # before binding: never serve a new, empty catalogue
    server = Server(cfg)
    stopper: list[threading.Thread] = []

    def _term(signum, _frame):
        if stopper:
            return
        log.info("signal %d: draining in-flight calls (up to %.0fs) and stopping", signum,
                 cfg.grace_seconds)
        stopper.append(threading.Thread(target=server.stop, name="stop"))
        stopper[0].start()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    while not server.ready.wait(0.2) and not stopper:  # short waits: signals get through
        pass
    if server.load_error is not None and not stopper:
        server.stop(0)
        first = str(server.load_error).strip().splitlines() or [type(server.load_error).__name__]
        raise StartupError(f"cannot serve: {first[0]}") from server.load_error
    server.wait()
    for t in stopper:
        t.join()
