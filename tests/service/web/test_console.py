"""The web console in a real browser (Playwright + Debian's chromium) over a real server."""

from __future__ import annotations

import httpx
import pytest

from service.demo import export_digits
from tests.service.conftest import digit
from tests.service.web.conftest import screenshot

pytestmark = pytest.mark.slow

HOSTILE_LABEL = '<script>window.__pwned = 1</script>'
HOSTILE_META = '<img src=x onerror="window.__pwned = 2"><b>bold</b>'


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Digits the index never saw: the fixture index holds the first 40 of each class."""
    root = tmp_path_factory.mktemp("held_out")
    export_digits(root, size=32)
    return {c.name: sorted(c.iterdir())[40:] for c in root.iterdir()}


def open_console(page, url: str):
    page.goto(url + "/")
    page.wait_for_selector("#main:not([hidden])")


def test_upload_a_held_out_image_and_its_class_tops_the_gallery(web, page, held_out, tmp_path):
    query = held_out["0"][0]
    open_console(page, web.url)
    page.set_input_files("#search-file", str(query))
    page.wait_for_selector("#search-results .card")
    labels = page.locator("#search-results .card .label").all_text_contents()
    assert labels[0] == "0" and len(labels) == 12
    with httpx.Client(base_url=web.url) as c:  # the gallery is the API's answer, in order
        hits = c.post("/v1/search", files={"image": query.open("rb")}, data={"k": "12"}).json()
    assert page.locator("#search-results .card .key").all_text_contents() == [
        h["key"] for h in hits["hits"]]
    page.wait_for_function("[...document.querySelectorAll('#search-results img.thumb')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    screenshot(page, tmp_path, "search")
    # clicking a hit searches from it: that image is then its own first hit
    second = page.locator("#search-results .card .key").nth(1).text_content()
    page.locator("#search-results .card").nth(1).click()
    page.wait_for_function(f"document.querySelector('#search-results .card .key')?.textContent"
                           f" === {second!r}")
    assert page.input_value("#search-key") == second
    # the API's filters: only label 1, excluding the query itself
    page.fill("#search-labels", "1")
    page.fill("#search-exclude", second)
    page.click("#search-go")
    page.wait_for_function("[...document.querySelectorAll('#search-results .card .label')]"
                           ".every(e => e.textContent === '1')")
    assert second not in page.locator("#search-results .card .key").all_text_contents()


def test_verify_two_images_shows_the_verdict_and_the_heatmap(web, page, digits_dir, tmp_path):
    a, b = digit(digits_dir, "4", 0), digit(digits_dir, "4", 1)
    open_console(page, web.url)
    page.click("#tabs button[data-tab=verify]")
    page.set_input_files("#verify-file-a", str(a))
    page.set_input_files("#verify-file-b", str(b))
    page.click("#verify-go")
    page.wait_for_selector("#verify-result:not([hidden])")
    with httpx.Client(base_url=web.url) as c:
        want = c.post("/v1/verify", files={"a": a.open("rb"), "b": b.open("rb")}).json()
    verdict = page.text_content("#verify-verdict")
    assert verdict == ("SAME" if want["same"] else "DIFFERENT")
    numbers = page.text_content("#verify-numbers")
    assert f"{want['distance']:.4f}" in numbers and f"threshold {want['threshold']:.4f}" in numbers
    assert "no face found" not in numbers  # the digits model has no face step
    page.wait_for_selector("#verify-heatmap:not([hidden])", timeout=120_000)
    page.wait_for_function("document.querySelector('#verify-heatmap-img').naturalWidth > 200")
    assert "regions" in page.text_content("#verify-heatmap-caption")
    screenshot(page, tmp_path, "verify")
    # one image against an enrolled identity: the nearest of its images decides
    page.fill("#verify-identity", "4")
    page.click("#verify-go")
    page.wait_for_function("document.querySelector('#verify-numbers').textContent"
                           ".includes('40 enrolled images')")
    assert page.text_content("#verify-verdict") == "SAME"
    assert page.is_hidden("#verify-heatmap")


def test_page_through_a_collection(web, page, tmp_path):
    open_console(page, web.url)
    page.click("#tabs button[data-tab=browse]")
    page.wait_for_selector("#browse-grid .card")
    assert page.text_content("#browse-page") == "page 1 of 17 · 400 images"
    first = page.locator("#browse-grid .card .key").all_text_contents()
    assert len(first) == 24 and page.is_disabled("#browse-prev")
    page.click("#browse-next")
    page.wait_for_function("document.querySelector('#browse-page').textContent"
                           ".startsWith('page 2 of 17')")
    second = page.locator("#browse-grid .card .key").all_text_contents()
    assert len(second) == 24 and not set(first) & set(second)
    page.fill("#browse-labels", "7")
    page.click("#browse-form button[type=submit]")
    page.wait_for_function("document.querySelector('#browse-page').textContent"
                           ".endsWith('40 images')")
    assert set(page.locator("#browse-grid .card .label").all_text_contents()) == {"7"}
    page.locator("#browse-grid .card").first.click()
    page.wait_for_selector("#browse-record:not([hidden]) img.big")
    page.wait_for_function("document.querySelector('#browse-record img.big').naturalWidth > 0")
    screenshot(page, tmp_path, "browse")


def test_index_panel_shows_what_is_served(web, page, tmp_path):
    open_console(page, web.url)
    page.click("#tabs button[data-tab=index]")
    page.wait_for_selector("#index-table tr")
    text = page.text_content("#index-table")
    with httpx.Client(base_url=web.url) as c:
        d = c.get("/v1/index").json()
    assert d["index_version"] in text and d["factory"] in text and "measured recall@10" in text
    screenshot(page, tmp_path, "index")


def test_submit_a_tsne_job_watch_it_and_open_its_report_and_map(web, page, tmp_path):
    open_console(page, web.url)
    page.click("#tabs button[data-tab=jobs]")
    page.wait_for_selector("#job-params input[name=perplexity]")
    assert page.input_value("#job-kind") == "tsne"
    assert page.locator("#job-params .help").count() >= 5  # every parameter says what it does
    page.fill("#job-params input[name=sample]", "80")
    page.fill("#job-params input[name=perplexity]", "10")
    page.click("#job-submit")
    page.wait_for_selector("#jobs-table tr.job-row[data-state=succeeded]", timeout=120_000)
    page.wait_for_selector("#open-report")
    page.click("#open-report")
    page.wait_for_selector("#report img")
    page.wait_for_function("[...document.querySelectorAll('#report img')]"
                           ".every(i => i.complete && i.naturalWidth > 100)")
    assert "t-SNE" in page.text_content("#report")
    screenshot(page, tmp_path, "jobs_report")
    page.click("text=Open the interactive map")
    page.wait_for_selector("#map-svg circle.point")
    assert page.locator("#map-svg circle.point").count() == 80
    assert page.locator("#map-legend div").count() == 10
    page.locator("#map-svg circle.point").first.hover()
    page.wait_for_selector("#map-tip:not([hidden])")
    page.wait_for_function("document.querySelector('#map-tip-img').naturalWidth > 0")
    key = page.locator("#map-svg circle.point").first.get_attribute("data-key")
    assert page.text_content("#map-tip-label").endswith(key)
    screenshot(page, tmp_path, "tsne_map")


def test_with_keys_required_the_console_shows_nothing_without_one(secured, page, digits_dir,
                                                                   tmp_path):
    page.goto(secured.url + "/")
    page.wait_for_selector("#key-panel:not([hidden])")
    assert page.is_hidden("#main")
    screenshot(page, tmp_path, "key_required")
    page.fill("#key-input", "isk_wrong_key")
    page.click("#key-form button")
    page.wait_for_selector("#key-error:text('unknown or revoked')")
    assert page.is_hidden("#main") and page.locator(".card").count() == 0
    page.fill("#key-input", secured.keys["read"])
    page.click("#key-form button")
    page.wait_for_selector("#main:not([hidden])")
    page.wait_for_selector("#browse-grid .card", state="attached")
    assert page.evaluate("sessionStorage.getItem('imgsim.apiKey')") == secured.keys["read"]
    assert page.evaluate("localStorage.length") == 0  # kept for the tab only
    page.fill("#search-key", "3/" + digit(digits_dir, "3", 0).stem)
    page.click("#search-go")
    page.wait_for_selector("#search-results .card")
    assert page.locator("#search-results .card .label").first.text_content() == "3"


def test_hostile_labels_and_metadata_are_shown_as_text_never_run(web, page, digits_dir, tmp_path):
    img = digit(digits_dir, "5", 3)
    with httpx.Client(base_url=web.url) as c:
        r = c.post("/v1/upsert", files=[("images", ("evil.png", img.read_bytes()))],
                   data={"key": "evil", "label": HOSTILE_LABEL, "meta": ["note=" + HOSTILE_META]})
        assert r.status_code == 200, r.text
    try:
        open_console(page, web.url)
        page.fill("#search-key", "evil")
        page.fill("#search-k", "3")
        page.click("#search-go")
        page.wait_for_selector("#search-results .card")
        card = page.locator("#search-results .card").first
        assert card.locator(".label").text_content() == HOSTILE_LABEL
        assert card.locator(".meta").text_content() == "note: " + HOSTILE_META
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#search-results script, #search-results b, "
                            "#search-results img[onerror]").count() == 0
        page.click("#tabs button[data-tab=browse]")
        page.fill("#browse-prefix", "evil")
        page.click("#browse-form button[type=submit]")
        page.wait_for_function("document.querySelector('#browse-page').textContent"
                               ".endsWith('1 images')")
        page.locator("#browse-grid .card").first.click()
        page.wait_for_selector("#browse-record:not([hidden])")
        assert HOSTILE_META in page.text_content("#browse-record")
        assert page.evaluate("window.__pwned") is None
        screenshot(page, tmp_path, "hostile")
    finally:
        with httpx.Client(base_url=web.url) as c:
            c.post("/v1/delete", json={"keys": ["evil"]})


def test_a_face_model_that_found_no_face_says_so(golden, tmp_path, tiny_checkpoint, digits_dir,
                                                 page, monkeypatch):
    """A face model with face_on_miss = fallback answers for a photo without a face, and the
    console says the answer came from the fallback crop, for the query and for each side of a
    verification; the digits model above has no face step and says nothing of the kind."""
    from dataclasses import replace

    import training.face.haar
    from indexer.build import BuildConfig, build_index
    from tests.service.web.conftest import serve
    from training.checkpoint import load_checkpoint, save_checkpoint

    monkeypatch.setattr(training.face.haar, "detect_faces", lambda img: [])  # no face anywhere
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.spec = replace(ckpt.spec, face_align="haar-crop", face_on_miss="fallback")
    face = save_checkpoint(tmp_path / "face.pt", ckpt)
    build_index(BuildConfig(checkpoint=str(face), images=str(digits_dir),
                            index_root=str(tmp_path / "idx"),
                            catalog_url=f"sqlite:///{tmp_path / 'cat.db'}", num_workers=0,
                            progress=False, factory="Flat"))
    monkeypatch.setenv("IMGSIM_JOBS_ROOT", str(tmp_path / "jobs"))
    served = serve(tmp_path, face)
    try:
        open_console(page, served.url)
        page.set_input_files("#search-file", str(digit(digits_dir, "2")))
        page.wait_for_selector("#search-results .card")
        assert "no face found in the query" in page.text_content("#search-info")
        page.click("#tabs button[data-tab=verify]")
        page.set_input_files("#verify-file-a", str(digit(digits_dir, "4", 0)))
        page.set_input_files("#verify-file-b", str(digit(digits_dir, "4", 1)))
        page.uncheck("#verify-explain")
        page.click("#verify-go")
        page.wait_for_selector("#verify-result:not([hidden])")
        numbers = page.text_content("#verify-numbers")
        assert "no face found in image A" in numbers and "no face found in image B" in numbers
        screenshot(page, tmp_path, "verify-no-face")
    finally:
        served.server.stop(0)
