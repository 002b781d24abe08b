"""Plugging JobService and a background job worker into a gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from imgsim.v1 import jobs_pb2 as jobs_pb
from imgsim.v1 import jobs_pb2_grpc as jobs_pb_grpc
from service.jobs.context import JobDefaults
from service.jobs.core import JobsCore
from service.jobs.servicer import JobServicer
from service.jobs.store import open_job_store
from service.jobs.worker import DEFAULT_ARTIFACTS_ROOT, JobWorker, WorkerConfig

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
                    artifacts_root: str = DEFAULT_ARTIFACTS_ROOT, worker_threads: int = 1,
                    defaults: JobDefaults | None = None,
                    poll_seconds: float = 1.0) -> JobsRuntime:
    """Register JobService on ``server`` and start ``worker_threads`` job-running threads
    (0: none; jobs then wait for an `imgsim jobs worker` process on the same catalogue)."""
    sessions = open_job_store(catalog_url)
    core = JobsCore(sessions)
    jobs_pb_grpc.add_JobServiceServicer_to_server(JobServicer(core), server)
    worker = None
    if worker_threads > 0:
        worker = JobWorker(WorkerConfig(catalog_url=catalog_url, artifacts_root=artifacts_root,
                                        concurrency=worker_threads,
                                        poll_seconds=poll_seconds,
                                        defaults=defaults or JobDefaults(catalog_url=catalog_url)),
                           sessions=sessions).start()
    log.info("JobService on; %d job worker thread(s)", worker_threads)
    return JobsRuntime(core, worker)
