"""gRPC adapter of JobService: protobuf <-> JobsCore, domain errors -> status codes."""

from __future__ import annotations

import json
import logging

import grpc

from imgsim.v1 import jobs_pb2 as pb
from imgsim.v1 import jobs_pb2_grpc as pb_grpc
from service.auth import Authenticator, key_from_metadata
from service.errors import ServiceError
from service.jobs.core import JobInfo, JobsCore
from service.jobs.store import JobState
from service.servicer import STATUS_OF

log = logging.getLogger(__name__)
STATE_TO_PB = {
    JobState.QUEUED: pb.JOB_STATE_QUEUED,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}


def job_to_pb(j: JobInfo) -> pb.Job:
    return pb.Job(id=j.id, kind=j.kind, state=STATE_TO_PB[j.state], progress=j.progress,
                  message=j.message, params_json=json.dumps(j.params), error=j.error,
                  artifacts=[pb.JobArtifact(name=a.name, path=a.path, media_type=a.media_type,
                                            caption=a.caption) for a in j.artifacts],
                  cancel_requested=j.cancel_requested,
                  **{k: v for k, v in j.to_dict().items()
                     if k in ("created_at", "started_at", "finished_at")})


class JobServicer(pb_grpc.JobServiceServicer):
    """With an authenticator (the server's API keys), Submit and Cancel need a write key (jobs
    read files on the server and spend its CPU); Get and List need any valid key."""

    def __init__(self, core: JobsCore, *, authenticator: Authenticator | None = None) -> None:
        self.core = core
        self.auth = authenticator

    def _call(self, context: grpc.ServicerContext, access: str, fn):
        try:
            if self.auth is not None:
                principal = self.auth.authenticate(
                    key_from_metadata(context.invocation_metadata()))
                principal.require(access, [])
            return fn()
        except ServiceError as e:
            context.abort(STATUS_OF.get(type(e), grpc.StatusCode.INTERNAL), str(e))

    def Submit(self, request: pb.SubmitJobRequest, context) -> pb.Job:
        return job_to_pb(self._call(context, "write", lambda: self.core.submit(
            request.kind, request.params_json)))

    def Get(self, request: pb.GetJobRequest, context) -> pb.Job:
        return job_to_pb(self._call(context, "read", lambda: self.core.get(request.id)))

    def List(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        state = STATE_FROM_PB.get(request.state)
        jobs = self._call(context, "read", lambda: self.core.list(state=state, kind=request.kind,
                                                                  limit=request.limit))
        return pb.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs])

    def Cancel(self, request: pb.CancelJobRequest, context) -> pb.Job:
        return job_to_pb(self._call(context, "write", lambda: self.core.cancel(request.id)))
