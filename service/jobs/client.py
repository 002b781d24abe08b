"""A small Python client of JobService; answers the same JobInfo objects as JobsCore."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from imgsim.v1 import jobs_pb2 as pb
from imgsim.v1 import jobs_pb2_grpc as pb_grpc
from service.jobs.core import Artifact, JobInfo
from service.jobs.servicer import STATE_FROM_PB, STATE_TO_PB
from service.jobs.store import JobState


def job_from_pb(j: pb.Job) -> JobInfo:
    def ts(s: str) -> datetime | None:
        return datetime.fromisoformat(s) if s else None

    return JobInfo(j.id, j.kind, STATE_FROM_PB[j.state], j.progress, j.message,
                   json.loads(j.params_json or "{}"), j.error,
                   tuple(Artifact(a.name, a.path, a.media_type, a.caption) for a in j.artifacts),
                   j.cancel_requested, ts(j.created_at), ts(j.started_at), ts(j.finished_at))


class JobClient:
    """``api_key`` is sent as a bearer token; ``tls_ca`` (PEM bytes or file) switches to TLS."""

    def __init__(self, target: str, *, timeout: float = 30.0,
                 channel: grpc.Channel | None = None, api_key: str | None = None,
                 tls_ca: bytes | str | Path | None = None,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        if channel is None:
            if tls_ca is not None:
                ca = tls_ca if isinstance(tls_ca, bytes) else Path(tls_ca).read_bytes()
                channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca))
            else:
                channel = grpc.insecure_channel(target)
        self.channel = channel
        self.stub = pb_grpc.JobServiceStub(self.channel)
        self.timeout = timeout
        self.metadata = metadata + ((("authorization", f"Bearer {api_key}"),) if api_key else ())

    def submit(self, kind: str, params: dict[str, Any] | None = None) -> JobInfo:
        return job_from_pb(self.stub.Submit(
            pb.SubmitJobRequest(kind=kind, params_json=json.dumps(params or {})),
            timeout=self.timeout, metadata=self.metadata))

    def get(self, job_id: int) -> JobInfo:
        return job_from_pb(self.stub.Get(pb.GetJobRequest(id=job_id), timeout=self.timeout,
                                         metadata=self.metadata))

    def list(self, *, state: str | JobState | None = None, kind: str = "",
             limit: int = 50) -> list[JobInfo]:
        st = STATE_TO_PB[JobState(state)] if state else pb.JOB_STATE_UNSPECIFIED
        r = self.stub.List(pb.ListJobsRequest(state=st, kind=kind, limit=limit),
                           timeout=self.timeout, metadata=self.metadata)
        return [job_from_pb(j) for j in r.jobs]

    def cancel(self, job_id: int) -> JobInfo:
        return job_from_pb(self.stub.Cancel(pb.CancelJobRequest(id=job_id), timeout=self.timeout,
                                            metadata=self.metadata))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
