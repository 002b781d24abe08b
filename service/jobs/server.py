"""Plugging JobService and a background job worker into a gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from imgsim.v1 import jobs_pb2 as jobs_pb
from imgsim.v1 import jobs_pb2_grpc as jobs_pb_grpc
from service.jobs.context import JobDefaults
from service.jobs.core import JobsCore
from service.jobs.servicer import JobServicer
from service.jobs.store import open_job_store
from service.jobs.worker import JobWorker, WorkerConfig, default_artifacts_root
from training.settings import data_root

if TYPE_CHECKING:
    from service.auth import Authenticator
    from service.hosting import HostServer
    from service.metrics import Metrics

log = logging.getLogger(__name__)

JOB_SERVICE_NAME = jobs_pb.DESCRIPTOR.services_by_name["JobService"].full_name


@dataclass
class JobsRuntime:
    """JobService's core and the worker threads running in this process (if any)."""

    core: JobsCore
    worker: JobWorker | None

    def stop(self, *, wait: bool = False) -> None:
        if self.worker is not None:
            self.worker.stop(wait=wait)


def add_job_service(server: grpc.Server, catalog_url: str, *,
                    artifacts_root: str | None = None, worker_threads: int = 1,
                    defaults: JobDefaults | None = None,
                    poll_seconds: float = 1.0,
                    authenticator: Authenticator | None = None,
                    metrics: Metrics | None = None) -> JobsRuntime:
    """Register JobService on ``server`` and start ``worker_threads`` job-running threads
    (0: none; jobs then wait for an `imgsim jobs worker` process on the same catalogue)."""
    sessions = open_job_store(catalog_url)
    core = JobsCore(sessions)
    jobs_pb_grpc.add_JobServiceServicer_to_server(
        JobServicer(core, authenticator=authenticator, metrics=metrics), server)
    worker = None
    if worker_threads > 0:
        worker = JobWorker(WorkerConfig(catalog_url=catalog_url,
                                        artifacts_root=artifacts_root or default_artifacts_root(),
                                        concurrency=worker_threads,
                                        poll_seconds=poll_seconds,
                                        defaults=defaults or JobDefaults(catalog_url=catalog_url)),
                           sessions=sessions).start()
    log.info("JobService on; %d job worker thread(s)", worker_threads)
    return JobsRuntime(core, worker)


def register_job_service(grpc_server: grpc.Server, server: HostServer) -> str:
    """The imgsim server's registrar for JobService (see service.server.SERVICER_REGISTRARS).

    Jobs default to the server's model, index and catalogue; ``cfg.job_threads`` worker
    threads (default 1; 0: none, leave the jobs to `imgsim jobs worker`) run them in the
    server process, outside the request path. ``server.stop`` also stops the worker from
    claiming more jobs; the threads are daemons, and a job still running when the process
    exits is marked failed by the next worker that starts on this host."""
    cfg = server.cfg
    threads = cfg.job_threads
    runtime = add_job_service(
        grpc_server, cfg.catalog_url, worker_threads=threads, authenticator=server.authenticator,
        metrics=getattr(server, "metrics", None),
        defaults=JobDefaults(checkpoint=cfg.checkpoint, index_root=cfg.index_root,
                             catalog_url=cfg.catalog_url, data_root=str(data_root()),
                             index_roots=tuple(getattr(cfg, "extra_index_roots", ()))))
    hooks = getattr(server, "stop_hooks", None)
    if hooks is not None:
        hooks.append(lambda: runtime.stop(wait=False))
    else:  # a server without stop hooks: chain onto its stop()
        server_stop = server.stop

        def stop(grace: float | None = None) -> None:
            server_stop(grace)
            runtime.stop(wait=False)

        server.stop = stop  # type: ignore[method-assign]
    server.jobs = runtime  # type: ignore[attr-defined]
    return JOB_SERVICE_NAME
