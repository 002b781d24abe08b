"""gRPC adapter of JobService: protobuf <-> JobsCore, domain errors -> status codes, metrics."""

from __future__ import annotations

import json
import logging

import grpc

from imgsim.v1 import jobs_pb2 as pb
from imgsim.v1 import jobs_pb2_grpc as pb_grpc
from service.auth import Authenticator, key_from_metadata
from service.errors import InvalidInput
from service.jobs.core import JobInfo, JobsCore
from service.jobs.store import JobState
from service.metrics import Metrics
from service.servicer import RpcCall
from service.validation import check_count, check_text

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


# params_json is parsed whole: bound it (and its nesting) before the JSON parser sees it
MAX_PARAMS_JSON_CHARS = 64 * 1024
MAX_KIND_CHARS = 64


def _params(text: str) -> str:
    check_count(len(text), MAX_PARAMS_JSON_CHARS, "characters of params_json")
    try:
        json.loads(text) if text.strip() else None
    except RecursionError as e:  # a deeply nested array exhausts the parser's stack
        raise InvalidInput("params_json is nested too deeply") from e
    except ValueError:
        pass  # not JSON: the core says why
    return text


class JobServicer(pb_grpc.JobServiceServicer):
    """With an authenticator (the server's API keys), Submit and Cancel need a write key (jobs
    read files on the server and spend its CPU); Get and List need any valid key. Errors are
    mapped, logged and counted as the similarity service's are (:class:`RpcCall`)."""

    def __init__(self, core: JobsCore, *, authenticator: Authenticator | None = None,
                 metrics: Metrics | None = None) -> None:
        self.core = core
        self.auth = authenticator
        self.metrics = metrics

    def _call(self, method: str, context: grpc.ServicerContext, access: str, fn):
        call = RpcCall(method, context, self.metrics)

        def run():
            if self.auth is not None:
                call.principal = self.auth.authenticate(
                    key_from_metadata(context.invocation_metadata()))
                call.principal.require(access, [])
            return fn()

        return call.run(run)

    def Submit(self, request: pb.SubmitJobRequest, context) -> pb.Job:
        def run() -> pb.Job:
            check_text(request.kind, "job kind", max_chars=MAX_KIND_CHARS)
            return job_to_pb(self.core.submit(request.kind, _params(request.params_json)))

        return self._call("JobService.Submit", context, "write", run)

    def Get(self, request: pb.GetJobRequest, context) -> pb.Job:
        return self._call("JobService.Get", context, "read",
                          lambda: job_to_pb(self.core.get(request.id)))

    def List(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        def run() -> pb.ListJobsResponse:
            if request.state and request.state not in STATE_FROM_PB:
                raise InvalidInput(f"unknown job state {request.state}; valid: "
                                   f"{', '.join(map(str, sorted(STATE_FROM_PB)))} (0: any)")
            check_text(request.kind, "job kind", max_chars=MAX_KIND_CHARS, allow_empty=True)
            jobs = self.core.list(state=STATE_FROM_PB.get(request.state), kind=request.kind,
                                  limit=request.limit)
            return pb.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs])

        return self._call("JobService.List", context, "read", run)

    def Cancel(self, request: pb.CancelJobRequest, context) -> pb.Job:
        return self._call("JobService.Cancel", context, "write",
                          lambda: job_to_pb(self.core.cancel(request.id)))

    def FetchArtifact(self, request: pb.FetchArtifactRequest, context):
        from service.jobs.artifacts import artifact_file, read_chunks

        def run():
            path, media = artifact_file(self.core.get(request.job_id), request.name)
            return path, media, path.stat().st_size, read_chunks(path)

        path, media, size, chunks = self._call("JobService.FetchArtifact", context, "read", run)
        first = True
        for piece in chunks:
            yield pb.ArtifactChunk(data=piece, **(dict(name=path.name, media_type=media,
                                                       size=size) if first else {}))
            first = False
        if first:  # an empty file: one chunk that says what it is
            yield pb.ArtifactChunk(name=path.name, media_type=media, size=0)
