"""What the jobs' pictures and tables tell a reader, and a report's title names its job."""

from imgsim.cli import main


# -- report titles ----------------------------------------------------------------------------
def _title(html: str) -> str:
    return html.split("<h1>")[1].split("</h1>")[0]


def test_report_of_an_in_process_run_names_its_kind_not_a_blank_id(tmp_path):
    assert main(["jobs", "run", "test-loop", "-p", "seconds=0.01", "--out", str(tmp_path)]) == 0
    title = _title((tmp_path / "report.html").read_text())
    assert title == "imgsim test-loop job (run in-process: not queued, no job id)"


def test_report_of_a_queued_job_names_its_id(tmp_path, store):
    from service.jobs.core import JobsCore
    from service.jobs.worker import JobWorker, WorkerConfig

    url, sessions = store
    core = JobsCore(sessions)
    core.submit("test-loop", {"seconds": 0.01})
    job = core.submit("test-loop", {"seconds": 0.01})
    worker = JobWorker(WorkerConfig(catalog_url=url, artifacts_root=str(tmp_path / "jobs")))
    assert sorted(worker.run_until_empty()) == [job.id - 1, job.id]
    report = next(a for a in core.get(job.id).artifacts if a.name == "report.html")
    with open(report.path) as f:
        assert _title(f.read()) == f"imgsim job {job.id} (test-loop)"
