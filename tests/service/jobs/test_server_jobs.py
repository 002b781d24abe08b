"""The imgsim server exposes JobService (reflection, API keys) and runs jobs in its worker
thread, with the server's model as the jobs' default checkpoint."""

import time

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from indexer.build import BuildConfig, build_index
from indexer.catalog import open_catalog
from service.auth import create_api_key
from service.jobs.client import JobClient
from service.jobs.store import JobState
from service.server import ServeConfig, Server
from service.store import ensure_service_tables

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory, digits_dir, tiny_checkpoint):
    tmp = tmp_path_factory.mktemp("srvjobs")
    url = f"sqlite:///{tmp / 'cat.db'}"
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                            index_root=str(tmp / "idx"), catalog_url=url, num_workers=0,
                            progress=False))
    sessions = open_catalog(url)
    ensure_service_tables(sessions)
    with sessions.begin() as s:
        write_key, _ = create_api_key(s, name="w", access="write", collections=["*"])
        read_key, _ = create_api_key(s, name="r", access="read", collections=["*"])
    mp = pytest.MonkeyPatch()
    mp.setenv("IMGSIM_JOBS_ROOT", str(tmp / "jobs"))
    server = Server(ServeConfig(checkpoint=str(tiny_checkpoint), index_root=str(tmp / "idx"),
                                catalog_url=url, port=0, require_api_key=True))
    assert server.ready.wait(60) and server.load_error is None
    target = f"127.0.0.1:{server.port}"
    yield server, target, write_key, read_key
    server.stop(0)
    mp.undo()
    assert server.jobs.worker._stop.is_set()  # stopping the server stops its job worker


def test_job_service_is_listed_by_reflection(served):
    _, target, *_ = served
    with grpc.insecure_channel(target) as ch:
        assert "imgsim.v1.JobService" in ProtoReflectionDescriptorDatabase(ch).get_services()


def test_jobs_need_keys_and_run_on_the_server(served, digits_dir):
    server, target, write_key, read_key = served
    a, b = sorted((digits_dir / "4").iterdir())[:2]
    with JobClient(target) as anon:
        with pytest.raises(grpc.RpcError) as e:
            anon.list()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with JobClient(target, metadata=(("x-api-key", read_key),)) as reader:
        assert reader.list() == []
        with pytest.raises(grpc.RpcError) as e:
            reader.submit("verify", {"a": str(a), "b": str(b)})
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with JobClient(target, api_key=write_key) as writer:
        # no checkpoint given: the job uses the server's model
        job = writer.submit("verify", {"a": str(a), "b": str(b), "patch": 16, "stride": 16})
        deadline = time.monotonic() + 60
        while writer.get(job.id).state not in (JobState.SUCCEEDED, JobState.FAILED):
            assert time.monotonic() < deadline, "the server's worker never finished the job"
            time.sleep(0.2)
        done = writer.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert {a.name for a in done.artifacts} >= {"verify.json", "why_match.png", "report.html"}
    # IMGSIM_JOBS_ROOT (set by the fixture) is where the server's worker writes
    root = server.jobs.worker.cfg.artifacts_root
    assert root.endswith("jobs") and not root.startswith("var/")
    assert all(a.path.startswith(root) for a in done.artifacts)


def test_jobs_cli_through_the_server(served, capsys):
    from imgsim.cli import main

    _, target, write_key, read_key = served
    assert main(["jobs", "list", "--server", target]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["jobs", "submit", "test-loop", "--server", target, "--api-key", read_key]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert main(["jobs", "submit", "test-loop", "-p", "seconds=0.01", "--wait", "--server",
                 target, "--api-key", write_key]) == 0
    out = capsys.readouterr().out
    assert "submitted job" in out and "succeeded" in out
