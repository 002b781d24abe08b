"""Images uploaded for jobs do not pile up: the worker removes a job's own when it ends, an
age-based sweep the rest, and neither touches an input a queued or running job still names."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.jobs.inputs import input_folders, release_inputs, sweep_inputs
from service.jobs.store import JobState, create_job, finish_job, open_job_store
from tests.service.conftest import digit
from tests.service.web.test_api_jobs import wait_done


@pytest.fixture()
def store(tmp_path):
    return open_job_store(f"sqlite:///{tmp_path / 'jobs.db'}")


def input_folder(root: Path, name: str, *, age_seconds: float = 0.0) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"png")
    t = time.time() - age_seconds
    os.utime(folder, (t, t))
    return folder


def test_parameters_name_input_folders_only_through_files_inside_them(tmp_path):
    root = tmp_path / "inputs"
    a = input_folder(root, "aaaa")
    params = {"a": str(a / "a.png"), "b": str(tmp_path / "elsewhere.png"), "n": 3,
              "images": [str(root / "bbbb" / "x.png")], "dir": str(root), "rel": "aaaa/a.png",
              "up": str(root / ".." / "inputs" / "cccc" / "y.png")}
    assert input_folders(params, root) == {a.resolve(), (root / "bbbb").resolve(),
                                           (root / "cccc").resolve()}


def test_the_sweep_removes_old_unnamed_inputs_and_keeps_the_rest(store, tmp_path):
    root = tmp_path / "inputs"
    old = input_folder(root, "old", age_seconds=7200)
    queued = input_folder(root, "queued", age_seconds=7200)
    running = input_folder(root, "running", age_seconds=7200)
    done = input_folder(root, "done", age_seconds=7200)
    fresh = input_folder(root, "fresh", age_seconds=60)
    with store.begin() as s:
        create_job(s, "verify", {"a": str(queued / "a.png"), "b": str(queued / "a.png")})
        r = create_job(s, "verify", {"a": str(running / "a.png"), "b": str(fresh / "a.png")})
        r.state = JobState.RUNNING.value
        d = create_job(s, "verify", {"a": str(done / "a.png"), "b": str(done / "a.png")})
        d.state = JobState.SUCCEEDED.value
    assert sweep_inputs(store, root, max_age_seconds=3600) == 2
    assert sorted(p.name for p in root.iterdir()) == ["fresh", "queued", "running"]
    assert not old.exists() and not done.exists()
    assert sweep_inputs(store, tmp_path / "none", max_age_seconds=0) == 0


def test_a_jobs_end_releases_its_inputs_unless_named_again_or_uploaded_again(store, tmp_path):
    root = tmp_path / "inputs"
    own = input_folder(root, "own", age_seconds=10)
    shared = input_folder(root, "shared", age_seconds=10)
    again = input_folder(root, "again", age_seconds=10)
    params = {"a": str(own / "a.png"), "b": str(shared / "a.png"), "c": str(again / "a.png")}
    with store.begin() as s:
        job = create_job(s, "verify", params)
        job.created_at = datetime.now(UTC) - timedelta(seconds=5)
        job_id, created = job.id, job.created_at
        create_job(s, "verify", {"a": str(shared / "a.png"), "b": str(shared / "a.png")})
    os.utime(again)  # uploaded again (for a job still to come) after this one was created
    with store.begin() as s:
        job = s.get(type(job), job_id)
        job.state = JobState.RUNNING.value
        finish_job(s, job_id, JobState.SUCCEEDED)
    assert release_inputs(store, root, params, created_at=created.replace(tzinfo=None)) == 1
    assert not own.exists() and shared.is_dir() and again.is_dir()


@pytest.mark.slow
def test_inputs_uploaded_over_http_are_gone_once_their_job_ends(web, digits_dir):
    a, b = digit(digits_dir, "4", 0), digit(digits_dir, "4", 1)
    with web.client() as c:
        pa = c.post("/v1/jobs/inputs", files={"image": a.open("rb")}).json()
        pb = c.post("/v1/jobs/inputs", files={"image": b.open("rb")}).json()
        assert Path(pa["path"]).is_file() and Path(pb["path"]).is_file()
        time.sleep(0.05)  # the job is created after the uploads, on a coarse clock too
        job = c.post("/v1/jobs", json={"kind": "verify", "params": {
            "a": pa["path"], "b": pb["path"], "patch": 16, "stride": 16}}).json()
        done = wait_done(c, job["id"])
        assert done["state"] == "succeeded", done["error"]
        assert not Path(pa["path"]).parent.exists() and not Path(pb["path"]).parent.exists()
        # the report drew them: it does not need them any more
        assert c.get(f"/v1/jobs/{job['id']}/files/why_match.png").status_code == 200
