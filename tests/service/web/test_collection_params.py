"""Verify by key and the t-SNE job on a collection other than the default, over the API and
in the console: a server serving two collections (the digits, and a second one of 0s and 1s)."""

from __future__ import annotations

import csv
import io
import shutil

import pytest

from indexer.build import BuildConfig, build_index
from tests.service.conftest import digit
from tests.service.web.conftest import screenshot, serve
from tests.service.web.test_api import error
from tests.service.web.test_api_jobs import wait_done
from tests.service.web.test_console import open_console

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two(golden, tmp_path_factory, tiny_checkpoint, digits_dir):
    """The golden workspace plus collection 'b' (15 zeros and 15 ones, keys 'b0/...', 'b1/...'
    that the default collection does not have), served from its own index root."""
    root = tmp_path_factory.mktemp("two") / "ws"
    shutil.copytree(golden, root)
    images = root / "b-images"
    for label in ("0", "1"):
        (images / f"b{label}").mkdir(parents=True)
        for p in sorted((digits_dir / label).iterdir())[:15]:
            shutil.copyfile(p, images / f"b{label}" / p.name)
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(images),
                            index_root=str(root / "idx-b"), catalog_url=f"sqlite:///{root / 'cat.db'}",
                            collection="b", num_workers=0, progress=False))
    mp = pytest.MonkeyPatch()
    mp.setenv("IMGSIM_JOBS_ROOT", str(root / "jobs"))
    served = serve(root, tiny_checkpoint, extra_index_roots=(str(root / "idx-b"),))
    yield served
    served.server.stop(0)
    mp.undo()


def b_key(digits_dir, label: str, i: int) -> str:
    return f"b{label}/{digit(digits_dir, label, i).stem}"


def test_verify_by_key_in_another_collection(two, digits_dir):
    a, b, other = b_key(digits_dir, "1", 0), b_key(digits_dir, "1", 1), b_key(digits_dir, "0", 0)
    with two.client() as c:
        assert c.get("/v1/index").json()["collections"] == ["default", "b"]
        same = c.post("/v1/verify", data={"a_key": a, "b_key": b, "collection": "b"})
        assert same.status_code == 200, same.text
        diff = c.post("/v1/verify", data={"a_key": a, "b_key": other, "collection": "b"}).json()
        assert same.json()["distance"] < diff["distance"]
        j = c.post("/v1/verify/json", json={"a": {"key": a, "collection": "b"},
                                            "b": {"key": b, "collection": "b"}}).json()
        assert j["distance"] == pytest.approx(same.json()["distance"])
        # the key is b's only: in the default collection it is unknown
        error(c.post("/v1/verify", data={"a_key": a, "b_key": b}), 404, "NOT_FOUND")
        ident = c.post("/v1/verify", data={"a_key": a, "collection": "b", "identity": "b1",
                                           "identity_collection": "b"}).json()
        assert ident["same"] and ident["enrolled_images"] == 15


def test_a_tsne_job_maps_the_collection_it_is_given(two):
    with two.client() as c:
        job = c.post("/v1/jobs", json={"kind": "tsne", "params": {
            "collection": "b", "sample": 100, "perplexity": 5, "thumbnails": 4}}).json()
        done = wait_done(c, job["id"])
        assert done["state"] == "succeeded", done["error"]
        assert done["params"]["collection"] == "b"
        url = next(a["url"] for a in done["artifacts"] if a["name"] == "tsne.csv")
        points = list(csv.DictReader(io.StringIO(c.get(url).text)))
        assert len(points) == 30 and {p["label"] for p in points} == {"b0", "b1"}
        assert all(p["key"].startswith(("b0/", "b1/")) for p in points)
        default = wait_done(c, c.post("/v1/jobs", json={"kind": "tsne", "params": {
            "sample": 50, "perplexity": 5, "thumbnails": 4}}).json()["id"])
        assert default["state"] == "succeeded", default["error"]
        url = next(a["url"] for a in default["artifacts"] if a["name"] == "tsne.csv")
        assert not any(p["key"].startswith("b") for p in
                       csv.DictReader(io.StringIO(c.get(url).text)))
        bad = wait_done(c, c.post("/v1/jobs", json={"kind": "tsne", "params": {
            "collection": "nowhere", "sample": 20}}).json()["id"])
        assert bad["state"] == "failed" and "no index of collection 'nowhere'" in bad["error"]


def test_the_console_verifies_keys_and_maps_another_collection(two, page, digits_dir, tmp_path):
    open_console(page, two.url)
    page.click("#tabs button[data-tab=verify]")
    page.select_option("#verify-collection", "b")
    page.uncheck("#verify-explain")
    page.fill("#verify-key-a", b_key(digits_dir, "0", 0))
    page.fill("#verify-key-b", b_key(digits_dir, "0", 1))
    page.click("#verify-go")
    page.wait_for_function("document.querySelector('#verify-numbers').textContent"
                           ".includes('distance')")
    assert page.text_content("#verify-verdict") in ("SAME", "DIFFERENT")
    screenshot(page, tmp_path, "verify_collection_b")
    page.click("#tabs button[data-tab=map]")
    page.select_option("#map-collection", "b")
    page.fill("#map-sample", "30")
    page.fill("#map-perplexity", "5")
    page.click("#map-run")
    page.wait_for_selector("#map-svg circle.point", timeout=120_000)
    assert page.locator("#map-svg circle.point").count() == 30
    assert page.locator("#map-legend div").count() == 2
    page.locator("#map-svg circle.point").first.hover()
    page.wait_for_function("document.querySelector('#map-tip-img').naturalWidth > 0")
    key = page.locator("#map-svg circle.point").first.get_attribute("data-key")
    assert key.startswith(("b0/", "b1/"))
    screenshot(page, tmp_path, "tsne_map_collection_b")
