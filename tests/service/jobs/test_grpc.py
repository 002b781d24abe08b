"""JobService over real gRPC (127.0.0.1:0): submit/get/list/cancel and status codes."""

import time
from concurrent import futures

import grpc
import pytest

from imgsim.v1 import jobs_pb2 as pb
from service.jobs.client import JobClient
from service.jobs.server import add_job_service
from service.jobs.store import JobState


@pytest.fixture
def served(tmp_path):
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    runtime = add_job_service(server, url, artifacts_root=str(tmp_path / "jobs"),
                              worker_threads=1, poll_seconds=0.05)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = JobClient(f"127.0.0.1:{port}")
    yield client
    client.close()
    runtime.stop(wait=True)
    server.stop(0)


def _wait(client, job_id, states, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck in {client.get(job_id).state}")


def test_submit_runs_on_the_server_worker(served):
    job = served.submit("test-loop", {"seconds": 0.05})
    assert job.kind == "test-loop" and job.params == {"seconds": 0.05, "fail": False}
    done = _wait(served, job.id, {JobState.SUCCEEDED, JobState.FAILED})
    assert done.state == JobState.SUCCEEDED and done.progress == pytest.approx(1.0)
    assert [a.name for a in done.artifacts] == ["note.txt", "report.html"]
    assert done.artifacts[1].media_type == "text/html"
    assert done.finished_at >= done.started_at >= done.created_at
    assert [j.id for j in served.list(state="succeeded")] == [job.id]
    assert served.list(kind="tsne") == []


def test_cancel_over_grpc(served):
    job = served.submit("test-loop", {"seconds": 30})
    _wait(served, job.id, {JobState.RUNNING})
    assert served.cancel(job.id).cancel_requested
    assert _wait(served, job.id, {JobState.CANCELLED}).state == JobState.CANCELLED
    with pytest.raises(grpc.RpcError) as e:
        served.cancel(job.id)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_status_codes(served):
    with pytest.raises(grpc.RpcError) as e:
        served.submit("no-such-kind", {})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "valid:" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        served.submit("test-loop", {"seconds": "x"})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        served.stub.Submit(pb.SubmitJobRequest(kind="test-loop", params_json="[1, 2]"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for call in (lambda: served.get(999), lambda: served.cancel(999)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
