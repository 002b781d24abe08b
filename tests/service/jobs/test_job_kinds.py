"""The built-in job kinds end to end through the worker, on real digit images and the tiny
trained model: each produces its PNG/HTML/JSON artifacts and meaningful numbers."""

import csv
import json
from pathlib import Path

import pytest

from service.jobs.context import JobDefaults
from service.jobs.core import JobsCore
from service.jobs.store import JobState
from service.jobs.worker import JobWorker, WorkerConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, digits_dir, tiny_checkpoint):
    from indexer.build import BuildConfig, build_index

    tmp = tmp_path_factory.mktemp("jobkinds")
    url = f"sqlite:///{tmp / 'cat.db'}"
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                            index_root=str(tmp / "idx"), catalog_url=url, num_workers=0,
                            progress=False))
    return tmp, url


@pytest.fixture(scope="module")
def run(indexed, tiny_checkpoint):
    tmp, url = indexed
    from service.jobs.store import open_job_store

    core = JobsCore(open_job_store(url))
    worker = JobWorker(WorkerConfig(
        catalog_url=url, artifacts_root=str(tmp / "jobs"),
        defaults=JobDefaults(checkpoint=str(tiny_checkpoint), index_root=str(tmp / "idx"),
                             catalog_url=url)))

    def go(kind: str, **params):
        job = core.submit(kind, params)
        assert worker.run_one() == job.id
        done = core.get(job.id)
        assert done.state == JobState.SUCCEEDED, done.error
        arts = {a.name: Path(a.path) for a in done.artifacts}
        assert all(p.is_file() for p in arts.values())
        html = arts["report.html"].read_text()
        assert f"<h1>imgsim job {job.id} ({kind})</h1>" in html
        for name, p in arts.items():  # every image is in the report
            if p.suffix == ".png":
                assert f'src="{name}"' in html
        return done, arts
    return go


def _img(digits_dir, label, i=0):
    return str(sorted((digits_dir / label).iterdir())[i])


def test_tsne_job_from_the_index(run):
    job, arts = run("tsne", perplexity=10, sample=120, thumbnails=10)
    assert {"tsne.png", "tsne.csv", "report.html"} <= set(arts)
    rows = list(csv.DictReader(arts["tsne.csv"].open()))
    assert len(rows) == 120 and list(rows[0]) == ["key", "path", "label", "x", "y"]
    for r in rows:  # each point traces back to its catalogued image
        assert r["key"] == f"{r['label']}/{Path(r['path']).stem}" and Path(r["path"]).is_file()
    assert "label agreement" in arts["report.html"].read_text()


def test_cluster_job_scores_against_labels(run, digits_dir):
    job, arts = run("cluster", images=str(digits_dir), method="kmeans", max_images=200)
    summary = json.loads(arts["summary.json"].read_text())
    assert summary["clusters"] == 10 and summary["labels"] == 10
    assert summary["nmi"] > 0.3 and summary["purity"] > 0.3  # far above chance (0.1)
    assert "clusters.png" in arts
    rows = list(csv.DictReader(arts["clusters.csv"].open()))
    assert len(rows) == 200 and all(r["key"] == f"{r['label']}/{Path(r['path']).stem}"
                                    for r in rows)


def test_verify_job_with_occlusion_heatmap(run, digits_dir):
    job, arts = run("verify", a=_img(digits_dir, "3"), b=_img(digits_dir, "3", 1), patch=8,
                    stride=8)
    res = json.loads(arts["verify.json"].read_text())
    assert res["threshold"] is not None and isinstance(res["same"], bool)
    assert 0 < res["distance"] < 2.0001 and "why_match.png" in arts


def test_gallery_job(run, digits_dir):
    job, arts = run("gallery", queries=[_img(digits_dir, "5", 2)], k=4)
    html = arts["report.html"].read_text()
    assert "gallery.png" in arts and html.count("<tr>") == 5  # header + 4 hits


def test_filters_reconstruct_ascent_dream_style(run, digits_dir):
    img = _img(digits_dir, "8")
    _, arts = run("filters", image=img)
    assert {"filters.png", "feature_maps.png"} <= set(arts)
    _, arts = run("reconstruct", image=img, layer="backbone.features.5")
    assert "reconstructions.png" in arts
    job, arts = run("ascent", target="output", index=0, steps=15)
    assert "ascent.png" in arts and "objective.png" in arts
    _, arts = run("deepdream", image=img, octaves=2, steps_per_octave=3)
    assert "dream.png" in arts
    _, arts = run("style-transfer", content=img, style=_img(digits_dir, "0"), steps=5)
    assert "style.png" in arts


def test_classifier_and_class_occlusion(run, digits_dir):
    job, arts = run("classifier", epochs=1, width=4)
    ck = str(arts["classifier.pt"])
    assert "test_accuracy" in arts["report.html"].read_text()
    _, arts = run("occlusion", image=_img(digits_dir, "2"), checkpoint=ck, patch=8, stride=4)
    assert "occlusion.png" in arts


def test_occlusion_refuses_an_embedding_model(indexed, tiny_checkpoint, digits_dir):
    tmp, url = indexed
    from service.jobs.store import open_job_store

    core = JobsCore(open_job_store(url))
    job = core.submit("occlusion", {"image": _img(digits_dir, "1"),
                                    "checkpoint": str(tiny_checkpoint)})
    JobWorker(WorkerConfig(catalog_url=url, artifacts_root=str(tmp / "jobs"))).run_one()
    done = core.get(job.id)
    assert done.state == JobState.FAILED and "needs a classifier" in done.error
