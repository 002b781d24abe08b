"""What the jobs' pictures and tables tell a reader: the cluster gallery shows each cluster's
central members with its size and purity, the verify figure overlays both heatmaps on one
colour scale under a verdict, the retrieval gallery explains its frames in readable type,
tsne.csv traces points back to images, and a report's title names its job."""

import csv

import numpy as np
import pytest
from matplotlib.text import Text

from imgsim.cli import main
from service.jobs.kinds.visualization import verdict, why_match_figure
from training.clustering import central_members, cluster_samples
from training.visualization.embeddings import EmbeddingSet, write_points_csv
from training.visualization.plots import cluster_gallery_figure, gallery_figure


def _texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_text().strip()]


# -- cluster gallery --------------------------------------------------------------------------
def _cluster_with_outliers_first():
    """Cluster 0 (20 members): 16 points spread in +/- pairs around the x axis come first in
    path order, the 4 nearest the axis (its centre) last. Cluster 1: 10 members, further off."""
    spread = [(1.0, s * t, 0.0) for t in np.linspace(0.3, 1.0, 8) for s in (1, -1)]
    core = [(1.0, s * 0.01, s * 0.01) for s in (1, -1, 1, -1)]
    other = [(0.0, 1.0, 0.1 * i) for i in range(10)]
    vectors = np.array(spread + core + other, np.float32)
    pred = np.array([0] * 20 + [1] * 10)
    return vectors, pred


def test_cluster_sample_is_its_most_central_members_not_path_order():
    vectors, pred = _cluster_with_outliers_first()
    labels = ["7"] * 13 + ["1"] * 3 + ["7"] * 4 + ["3"] * 10
    s = cluster_samples(vectors, labels, pred, clusters=5, per_cluster=5, seed=0)
    assert [c.cluster for c in s] == [0, 1]  # largest first
    big = s[0]
    assert sorted(big.central) == [16, 17, 18, 19]  # the core, although last in path order
    assert len(big.random) == 1 and set(big.random).isdisjoint(big.central)
    assert big.random[0] < 16  # drawn from the rest of the cluster
    assert big.size == 20 and big.purity == pytest.approx(17 / 20) and big.majority == "7"
    assert big.title == "cluster 0: 20 images, 85% '7'"
    assert s[1].title == "cluster 1: 10 images, 100% '3'"
    # the nearest member of the spread pairs comes right after the core
    assert set(central_members(vectors, np.arange(20), 6)[4:]) == {0, 1}


def test_cluster_sample_without_labels_states_only_the_size():
    vectors, pred = _cluster_with_outliers_first()
    s = cluster_samples(vectors, [""] * 30, pred, clusters=1, per_cluster=10, seed=0)
    assert len(s) == 1 and s[0].title == "cluster 0: 20 images"
    assert s[0].purity is None and len(s[0].central) == 7 and len(s[0].random) == 3


def test_cluster_gallery_titles_each_row_and_marks_the_random_members():
    img = np.zeros((8, 8))
    rows = [("cluster 4: 112 images, 87% '7'", [(img, "7", True, False), (img, "1", False, True)]),
            ("cluster 2: 50 images, 60% '3'", [(img, "3", True, False)])]
    fig = cluster_gallery_figure(rows, title="kmeans")
    texts = [t.get_text() for t in _texts(fig)]
    assert "cluster 4: 112 images, 87% '7'" in texts and "cluster 2: 50 images, 60% '3'" in texts
    assert "1\n(random)" in texts and "7" in texts
    legend = " ".join(t.get_text() for lg in fig.findobj(lambda a: hasattr(a, "get_texts"))
                      for t in lg.get_texts())
    assert "green: the cluster's majority label" in legend and "random member" in legend


# -- the verify job's "why do these match" figure ---------------------------------------------
def _why_match(distance=0.19, threshold=0.279):
    rng = np.random.default_rng(0)
    images = [rng.random((16, 16, 3)), rng.random((16, 16, 3))]
    heat_a = np.zeros((16, 16))
    heat_a[4:8, 4:8] = 0.1
    heat_b = np.linspace(-0.02, 0.02, 256).reshape(16, 16)  # a much smaller range than a's
    return why_match_figure(images, [heat_a, heat_b], names=["a.png", "b.png"], mode="a",
                            distance=distance, threshold=threshold, patch=8)


def test_why_match_overlays_both_heatmaps_on_one_colour_scale():
    fig = _why_match()
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    for ax in panels:
        photo, heat = ax.images  # the heatmap is blended over its own image, not beside it
        assert photo.get_cmap().name == "gray"
        alpha = np.asarray(heat.get_alpha())
        assert 0 < alpha.min() and alpha.max() < 1
    clims = [ax.images[1].get_clim() for ax in panels]
    assert clims[0] == clims[1] == (-0.1, 0.1)  # one scale, symmetric about 0
    bars = [ax for ax in fig.axes if not ax.images]
    assert len(bars) == 1 and "similarity drop when occluded" in bars[0].get_ylabel()
    assert "a.png" in panels[0].get_title() and "b.png" in panels[1].get_title()


def test_why_match_title_gives_the_verdict_distance_and_threshold():
    assert _why_match(0.19, 0.279)._suptitle.get_text().startswith(
        "SAME: distance 0.190 ≤ threshold 0.279")
    assert _why_match(0.5, 0.279)._suptitle.get_text().startswith(
        "DIFFERENT: distance 0.500 > threshold 0.279")
    assert verdict(0.5, None).startswith("NO VERDICT")


# -- retrieval gallery ------------------------------------------------------------------------
def _gallery(ok):
    img = np.zeros((8, 8))
    return gallery_figure([(img, "query\n3", [(img, "3\nd=0.100", ok), (img, "5\nd=0.200",
                                                                       None if ok is None
                                                                       else not ok)])],
                          title="top-2 from index v1")


def test_retrieval_gallery_explains_its_frames_in_readable_type():
    fig = _gallery(True)
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert legend == ["green: same label as the query", "red: different label"]
    sizes = {t.get_text(): t.get_fontsize() for t in _texts(fig)}
    assert min(sizes.values()) >= 8, sizes  # at the default size, text of 6 pt is unreadable
    assert not _gallery(None).legends  # nothing framed, nothing to explain


# -- tsne.csv ---------------------------------------------------------------------------------
def test_points_csv_traces_each_point_to_its_image(tmp_path):
    data = EmbeddingSet(np.zeros((2, 4), np.float32), ["3", "5"], ["/d/3/a.png", "/d/5/b.png"],
                        ["3/a", "5/b"])
    out = write_points_csv(tmp_path / "tsne.csv", data, np.array([[1.5, -2.0], [0.25, 3.0]]))
    rows = list(csv.DictReader(out.open()))
    assert rows == [{"key": "3/a", "path": "/d/3/a.png", "label": "3", "x": "1.5", "y": "-2"},
                    {"key": "5/b", "path": "/d/5/b.png", "label": "5", "x": "0.25", "y": "3"}]
    assert data.subset(np.array([1])).keys == ["5/b"]
    with pytest.raises(ValueError, match="3 points for 2 images"):
        write_points_csv(tmp_path / "x.csv", data, np.zeros((3, 2)))


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


# -- the other pictures: labelled axes, a key, readable type ------------------------------------
@pytest.fixture
def drawn(monkeypatch):
    """The figures the plotting functions would have saved, kept open for inspection."""
    from training.visualization import plots

    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figs.append(fig) or path)
    return figs


def test_curves_label_their_axes(drawn):
    from training.visualization.plots import curve

    curve([3.0, 2.0, 1.0], "x.png", title="objective: output[0]", ylabel="objective")
    curve([3.0, 2.0], "y.png", title="losses", ylabel="style", more={"content": [1.0, 0.5]},
          axis_label="loss")
    (one,), (two,) = drawn[0].axes, drawn[1].axes
    assert one.get_ylabel() == "objective" and one.get_xlabel() == "optimisation step"
    assert two.get_ylabel() == "loss (log scale)" and two.get_yscale() == "log"
    assert [t.get_text() for t in two.get_legend().get_texts()] == ["style", "content"]


def test_feature_maps_say_how_they_are_scaled_in_readable_type(drawn):
    from training.visualization.plots import feature_maps_figure

    feature_maps_figure({"conv1": np.random.default_rng(0).random((4, 6, 6))}, "f.png",
                        max_channels=4)
    fig = drawn[0]
    assert "each scaled to its own range" in fig._suptitle.get_text()
    assert "conv1: 4 channels of 6x6" in [t.get_text() for t in _texts(fig)]
    assert min(t.get_fontsize() for t in _texts(fig)) >= 8


def test_tsne_map_has_a_titled_legend_and_thumbnails_framed_by_label(drawn):
    from matplotlib.offsetbox import AnnotationBbox

    from training.visualization.plots import scatter_with_thumbnails

    pts = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    scatter_with_thumbnails(pts, ["a", "b", "a"], "t.png", thumbs={1: np.zeros((4, 4))})
    (ax,) = drawn[0].axes
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "label" and legend.get_texts()[0].get_fontsize() >= 8
    (box,) = [a for a in ax.artists if isinstance(a, AnnotationBbox)]
    b_colour = ax.collections[1].get_facecolor()[0]  # label "b"'s points
    assert np.allclose(box.patch.get_edgecolor(), b_colour)
