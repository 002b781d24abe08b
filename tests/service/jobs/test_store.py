"""The job queue: state machine, atomic claiming, cancel, worker outcomes, params checking."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from service.core import FailedPrecondition, InvalidInput, NotFound
from service.jobs.core import JobsCore
from service.jobs.registry import JOB_KINDS, register_job
from service.jobs.store import (
    TRANSITIONS,
    InvalidTransition,
    JobRow,
    JobState,
    claim_next,
    create_job,
    fail_orphaned_jobs,
    finish_job,
    parse_worker_name,
    request_cancel,
    transition,
)
from service.jobs.worker import JobWorker, WorkerConfig


def test_state_machine_allows_only_forward_moves():
    allowed = {(a, b) for a, bs in TRANSITIONS.items() for b in bs}
    assert allowed == {(JobState.QUEUED, JobState.RUNNING), (JobState.QUEUED, JobState.CANCELLED),
                       (JobState.RUNNING, JobState.SUCCEEDED), (JobState.RUNNING, JobState.FAILED),
                       (JobState.RUNNING, JobState.CANCELLED)}
    row = JobRow(id=1, state=JobState.SUCCEEDED.value)
    for new in JobState:
        with pytest.raises(InvalidTransition):
            transition(row, new)
    row = JobRow(id=2, state=JobState.QUEUED.value)
    with pytest.raises(InvalidTransition, match="queued"):
        transition(row, JobState.SUCCEEDED)
    transition(row, JobState.RUNNING)
    transition(row, JobState.FAILED)
    assert row.state == "failed" and row.finished_at is not None


def test_claim_is_exclusive_and_in_order(store):
    _, sessions = store
    with sessions.begin() as s:
        ids = [create_job(s, "test-loop", {}).id for _ in range(3)]
    claimed = []
    with sessions.begin() as s:
        claimed.append(claim_next(s, "w1").id)
    with sessions.begin() as s:
        claimed.append(claim_next(s, "w2").id)
    assert claimed == ids[:2]
    with sessions.begin() as s:
        assert claim_next(s, "w3", kinds={"other-kind"}) is None
        row = claim_next(s, "w3")
        assert row.id == ids[2] and row.state == "running" and row.worker == "w3"
    with sessions.begin() as s:
        assert claim_next(s, "w4") is None


def test_cancel_queued_at_once_running_by_flag_finished_refused(store):
    _, sessions = store
    with sessions.begin() as s:
        a, b = create_job(s, "test-loop", {}).id, create_job(s, "test-loop", {}).id
    with sessions.begin() as s:
        assert request_cancel(s, a).state == "cancelled"
    with sessions.begin() as s:
        assert claim_next(s, "w").id == b  # the cancelled job is never claimed
    with sessions.begin() as s:
        row = request_cancel(s, b)
        assert row.state == "running" and row.cancel_requested
    with sessions.begin() as s:
        finish_job(s, b, JobState.CANCELLED)
    with sessions.begin() as s, pytest.raises(InvalidTransition, match="cancelled"):
        request_cancel(s, b)
    with sessions.begin() as s:
        assert request_cancel(s, 999) is None


def test_core_checks_kind_and_params(store):
    _, sessions = store
    core = JobsCore(sessions)
    with pytest.raises(InvalidInput, match="unknown job kind 'nope'; valid: .*tsne"):
        core.submit("nope", {})
    with pytest.raises(InvalidInput, match="unknown parameter.*'bogus'"):
        core.submit("test-loop", {"bogus": 1})
    with pytest.raises(InvalidInput, match="seconds must be a number"):
        core.submit("test-loop", {"seconds": "soon"})
    with pytest.raises(InvalidInput, match="needs parameter 'image'"):
        core.submit("occlusion", {})
    with pytest.raises(InvalidInput, match="not valid JSON"):
        core.submit("test-loop", "{oops")
    for not_an_object in ("[]", "[1]", '"x"', "3"):
        with pytest.raises(InvalidInput, match="must be a JSON object"):
            core.submit("test-loop", not_an_object)
    with pytest.raises(InvalidInput, match="seconds must be a finite number"):
        core.submit("test-loop", '{"seconds": 1e999}')
    job = core.submit("test-loop", '{"seconds": 2}')
    assert job.state == JobState.QUEUED and job.params == {"seconds": 2.0, "fail": False}
    assert core.get(job.id) == job
    with pytest.raises(NotFound):
        core.get(12345)
    with pytest.raises(InvalidInput, match="unknown state"):
        core.list(state="sleeping")
    assert [j.id for j in core.list(kind="test-loop")] == [job.id]


def _worker(url, tmp_path, **kw):
    return JobWorker(WorkerConfig(catalog_url=url, artifacts_root=str(tmp_path / "art"),
                                  poll_seconds=0.05, progress_interval=0.0, **kw))


def test_worker_success_and_failure(store, tmp_path):
    url, sessions = store
    core = JobsCore(sessions)
    ok = core.submit("test-loop", {"seconds": 0.05})
    bad = core.submit("test-loop", {"fail": True})
    worker = _worker(url, tmp_path)
    assert worker.run_until_empty() == [ok.id, bad.id]
    done = core.get(ok.id)
    assert done.state == JobState.SUCCEEDED and done.progress == 1.0
    assert done.started_at is not None and done.finished_at >= done.started_at
    names = [a.name for a in done.artifacts]
    assert names == ["note.txt", "report.html"]
    assert Path(done.artifacts[0].path).read_text() == "hello"
    failed = core.get(bad.id)
    assert failed.state == JobState.FAILED and "RuntimeError: asked to fail" in failed.error
    assert [a.name for a in failed.artifacts] == ["note.txt", "report.html"]  # partial kept
    with pytest.raises(FailedPrecondition, match="already succeeded"):
        core.cancel(ok.id)


def test_cancel_a_running_job(store, tmp_path):
    url, sessions = store
    core = JobsCore(sessions)
    job = core.submit("test-loop", {"seconds": 30})
    worker = _worker(url, tmp_path)
    t = threading.Thread(target=worker.run_one)
    t.start()
    deadline = time.monotonic() + 10
    while core.get(job.id).state != JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert core.get(job.id).state == JobState.RUNNING
    assert core.cancel(job.id).cancel_requested
    t.join(10)
    assert not t.is_alive()
    final = core.get(job.id)
    assert final.state == JobState.CANCELLED and final.finished_at is not None
    assert final.progress < 1.0


def test_background_threads_drain_the_queue(store, tmp_path):
    url, sessions = store
    core = JobsCore(sessions)
    ids = [core.submit("test-loop", {"seconds": 0.01}).id for _ in range(4)]
    worker = _worker(url, tmp_path, concurrency=2).start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
            core.get(i).state != JobState.SUCCEEDED for i in ids):
        time.sleep(0.05)
    worker.stop()
    assert all(core.get(i).state == JobState.SUCCEEDED for i in ids)


def _running(sessions, worker: str, *, beat_age: float = 0.0, artifacts=()) -> int:
    """A job left running by ``worker``, its last heartbeat ``beat_age`` seconds ago."""
    with sessions.begin() as s:
        job_id = create_job(s, "test-loop", {}).id
    with sessions.begin() as s:
        row = claim_next(s, worker)
        row.heartbeat_at = datetime.now(UTC) - timedelta(seconds=beat_age)
        row.artifacts = list(artifacts)
    return job_id


def test_jobs_of_dead_workers_are_failed_on_restart(store, tmp_path):
    url, sessions = store
    host, me = socket.gethostname(), os.getpid()
    png = tmp_path / "art" / "old" / "half.png"
    png.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(png)
    done = [{"name": "half.png", "path": str(png), "media_type": "image/png", "caption": "c"}]
    dead = _running(sessions, f"{host}:999999999", artifacts=done)       # no such pid
    reused = _running(sessions, f"{host}:{me}:0ld")  # this pid, but no live worker of ours
    alive = _running(sessions, f"{host}:{os.getppid()}:abc")             # a live process here
    remote = _running(sessions, "elsewhere:1:x", beat_age=5)             # fresh heartbeat
    silent = _running(sessions, "elsewhere:2:y", beat_age=600)           # lease ran out
    custom = _running(sessions, "gpu-box", beat_age=600)
    worker = _worker(url, tmp_path)  # a new worker recovers on start
    core = JobsCore(sessions)
    states = {j: core.get(j).state for j in (dead, reused, alive, remote, silent, custom)}
    assert states == {dead: JobState.FAILED, reused: JobState.FAILED, alive: JobState.RUNNING,
                      remote: JobState.RUNNING, silent: JobState.FAILED,
                      custom: JobState.FAILED}
    assert "exited" in core.get(dead).error
    assert "this process has its pid" in core.get(reused).error
    assert "stopped sending heartbeats" in core.get(silent).error
    assert "worker gpu-box stopped sending heartbeats (last: 20" in core.get(custom).error
    # the dead job's finished artifact stays, flagged partial; its report says it failed
    failed = core.get(dead)
    assert "1 artifact(s) are partial" in failed.error and failed.finished_at is not None
    assert [a.name for a in failed.artifacts] == ["half.png", "report.html"]
    page = Path(failed.artifacts[1].path).read_text()
    assert 'class="status">This job failed' in page and 'src="half.png"' in page
    # this process's own live worker is never taken for a dead one
    mine = _running(sessions, worker.name)
    assert worker.recover() == [] and core.get(mine).state == JobState.RUNNING


def test_a_sigkilled_worker_process_is_noticed_by_the_next_worker(store, tmp_path):
    """A real process claims a job and is killed with SIGKILL mid-job."""
    url, sessions = store
    core = JobsCore(sessions)
    job = core.submit("test-loop", {"seconds": 60})
    code = ("import os, socket, sys, time\n"
            "from service.jobs.store import claim_next, open_job_store\n"
            "S = open_job_store(sys.argv[1])\n"
            "with S.begin() as s:\n"
            "    claim_next(s, f'{socket.gethostname()}:{os.getpid()}:k1ll')\n"
            "print('claimed', flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[3])
    try:
        assert proc.stdout.readline().strip() == "claimed"
        assert core.get(job.id).state == JobState.RUNNING
        _worker(url, tmp_path)  # its process is alive: not touched
        assert core.get(job.id).state == JobState.RUNNING
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    _worker(url, tmp_path)
    final = core.get(job.id)
    assert final.state == JobState.FAILED and "exited while the job was running" in final.error


@dataclass(frozen=True)
class SilentParams:
    seconds: float = 0.5


def test_heartbeat_keeps_a_silent_job_alive_and_an_expired_lease_wins(store, tmp_path):
    """A job that reports no progress keeps its lease through the heartbeat thread; a job
    failed as orphaned meanwhile stays failed when its (slow, not dead) worker finishes."""
    url, sessions = store
    if "test-silent" not in JOB_KINDS:
        register_job("test-silent", SilentParams, "test only: sleep without progress")(
            lambda p, ctx: time.sleep(p.seconds))
    try:
        core = JobsCore(sessions)
        job = core.submit("test-silent", {"seconds": 0.8})
        fast = dict(heartbeat_seconds=0.05, lease_seconds=0.3)
        worker, watcher = _worker(url, tmp_path, **fast), _worker(url, tmp_path, **fast)
        t = threading.Thread(target=worker.run_one)
        t.start()
        while core.get(job.id).state == JobState.QUEUED:
            time.sleep(0.01)
        while t.is_alive():  # another worker keeps looking for orphans: this is none
            assert watcher.recover() == []
            time.sleep(0.05)
        assert core.get(job.id).state == JobState.SUCCEEDED

        job = core.submit("test-loop", {"seconds": 30})
        t = threading.Thread(target=worker.run_one)
        t.start()
        while core.get(job.id).state == JobState.QUEUED:
            time.sleep(0.01)
        with sessions.begin() as s:  # as if its heartbeats had stopped for an hour
            assert fail_orphaned_jobs(s, host="nowhere", pid=0, is_alive=lambda _: True,
                                      lease_seconds=60,
                                      now=datetime.now(UTC) + timedelta(hours=1)) == [job.id]
        t.join(10)
        assert not t.is_alive()  # it noticed at its next progress report and stopped
        final = core.get(job.id)
        assert final.state == JobState.FAILED and "heartbeats" in final.error
    finally:
        JOB_KINDS.pop("test-silent", None)


def test_worker_names_and_lease_settings():
    assert parse_worker_name("h:12:ab") == ("h", 12) == parse_worker_name("h:12")
    assert parse_worker_name("gpu-box") is None and parse_worker_name("h:x:1") is None
    with pytest.raises(ValueError, match="twice heartbeat_seconds"):
        WorkerConfig(catalog_url="sqlite://", heartbeat_seconds=10, lease_seconds=15)


def test_a_new_worker_is_named_after_its_host_and_process(store, tmp_path):
    url, _ = store
    a, b = _worker(url, tmp_path), _worker(url, tmp_path)
    assert parse_worker_name(a.name) == (socket.gethostname(), os.getpid())
    assert a.name != b.name  # two workers of one process tell their jobs apart
