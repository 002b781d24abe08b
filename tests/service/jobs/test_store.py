"""The job queue: state machine, atomic claiming, cancel, worker outcomes, params checking."""

import threading
import time
from pathlib import Path

import pytest

from service.core import FailedPrecondition, InvalidInput, NotFound
from service.jobs.core import JobsCore
from service.jobs.store import (
    TRANSITIONS,
    InvalidTransition,
    JobRow,
    JobState,
    claim_next,
    create_job,
    finish_job,
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


def test_jobs_of_dead_workers_are_failed_on_restart(store, tmp_path):
    import socket

    url, sessions = store
    with sessions.begin() as s:
        dead, alive = create_job(s, "test-loop", {}).id, create_job(s, "test-loop", {}).id
    host = socket.gethostname()
    with sessions.begin() as s:
        claim_next(s, f"{host}:999999999")  # no such pid
        claim_next(s, f"{host}:{__import__('os').getpid()}")
    _worker(url, tmp_path)  # a new worker recovers on start
    core = JobsCore(sessions)
    assert core.get(dead).state == JobState.FAILED and "exited" in core.get(dead).error
    assert core.get(alive).state == JobState.RUNNING
