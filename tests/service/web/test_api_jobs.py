"""The jobs API over HTTP: kinds, submit, list, get, cancel, and fetching what a job drew."""

from __future__ import annotations

import csv
import io
import time

import pytest

from tests.service.conftest import digit
from tests.service.web.test_api import error

pytestmark = pytest.mark.slow


def wait_done(c, job_id: int, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}"
        time.sleep(0.3)


def test_kinds_describe_their_parameters(web):
    with web.client() as c:
        kinds = {k["name"]: k for k in c.get("/v1/jobs/kinds").json()["kinds"]}
    assert {"tsne", "verify", "segment-train", "gallery"} <= set(kinds)
    verify = {p["name"]: p for p in kinds["verify"]["params"]}
    assert {k: verify["a"][k] for k in ("type", "required", "default")} == {
        "type": "str", "required": True, "default": None}
    assert all(p["help"] for k in kinds.values() for p in k["params"])  # each says what it does
    assert verify["patch"]["type"] == "int" and verify["patch"]["default"] == 8
    assert {p["name"]: p for p in kinds["reconstruct"]["params"]}["methods"]["type"] \
        == "list[str]"


def test_a_tsne_job_runs_and_its_files_are_fetched_and_nothing_outside(web):
    with web.client() as c:
        job = c.post("/v1/jobs", json={"kind": "tsne", "params": {"sample": 60,
                                                                  "perplexity": 10}}).json()
        assert job["state"] == "queued" and job["params"]["sample"] == 60
        assert job["id"] in [j["id"] for j in c.get("/v1/jobs").json()["jobs"]]
        done = wait_done(c, job["id"])
        assert done["state"] == "succeeded", done["error"]
        urls = {a["name"]: a["url"] for a in done["artifacts"]}
        png = c.get(urls["tsne.png"])
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        points = list(csv.DictReader(io.StringIO(c.get(urls["tsne.csv"]).text)))
        assert len(points) == 60 and {"key", "label", "x", "y"} <= set(points[0])
        report = c.get(urls["report.html"])
        assert report.headers["content-type"].startswith("text/html")
        assert report.headers["content-security-policy"].startswith("sandbox")
        assert 'src="tsne.png"' in report.text  # its relative link resolves beside it
        assert c.get(f"/v1/jobs/{job['id']}/files/tsne.png").content == png.content
        for bad in ("../../cat.db", "..%2F..%2Fcat.db", "%2Fetc%2Fpasswd"):
            assert c.get(f"/v1/jobs/{job['id']}/files/{bad}").status_code in (400, 404)
        assert "already" in error(c.post(f"/v1/jobs/{job['id']}/cancel"), 409,
                                  "FAILED_PRECONDITION")
        assert c.get("/v1/jobs", params={"kind": "verify"}).json()["jobs"] == []
        assert c.get("/v1/jobs", params={"state": "succeeded"}).json()["jobs"][0]["id"] \
            == job["id"]


def test_uploaded_inputs_feed_a_verify_job_that_draws_the_heatmap(web, digits_dir):
    a, b = digit(digits_dir, "2", 0), digit(digits_dir, "2", 1)
    with web.client() as c:
        pa = c.post("/v1/jobs/inputs", files={"image": a.open("rb")}).json()
        pb = c.post("/v1/jobs/inputs", files={"image": b.open("rb")}).json()
        assert pa["path"].startswith(str(web.root / "jobs")) and pa["bytes"] == a.stat().st_size
        assert c.post("/v1/jobs/inputs", files={"image": a.open("rb")}).json() == pa  # by content
        error(c.post("/v1/jobs/inputs", files={"image": ("x.png", b"junk")}), 400,
              "INVALID_ARGUMENT")
        job = c.post("/v1/jobs", json={"kind": "verify", "params": {
            "a": pa["path"], "b": pb["path"], "patch": 16, "stride": 16}}).json()
        done = wait_done(c, job["id"])
        assert done["state"] == "succeeded", done["error"]
        names = {x["name"] for x in done["artifacts"]}
        assert {"why_match.png", "verify.json", "report.html"} <= names


def test_bad_submissions_and_unknown_jobs(web):
    with web.client() as c:
        assert "unknown job kind" in error(c.post("/v1/jobs", json={"kind": "nope"}), 400,
                                           "INVALID_ARGUMENT")
        assert "unknown parameter" in error(
            c.post("/v1/jobs", json={"kind": "tsne", "params": {"bogus": 1}}), 400,
            "INVALID_ARGUMENT")
        error(c.post("/v1/jobs", json={"kind": "verify", "params": {"a": "x"}}), 400,
              "INVALID_ARGUMENT")
        error(c.get("/v1/jobs/999999"), 404, "NOT_FOUND")
        error(c.post("/v1/jobs/999999/cancel"), 404, "NOT_FOUND")
        error(c.get("/v1/jobs", params={"state": "sleeping"}), 400, "INVALID_ARGUMENT")
        job = c.post("/v1/jobs", json={"kind": "classifier", "params": {"epochs": 50}}).json()
        cancelled = c.post(f"/v1/jobs/{job['id']}/cancel").json()
        assert cancelled["cancel_requested"] or cancelled["state"] == "cancelled"
        assert wait_done(c, job["id"])["state"] == "cancelled"
