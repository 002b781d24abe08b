"""Hostile requests on the core: filter caps, control characters and lengths, on both databases."""

import shutil

import pytest
from sqlalchemy import select

from indexer.build import BuildConfig, build_index
from indexer.catalog import ImageRow, open_catalog
from indexer.versions import load_index_version
from service.core import (
    CoreOptions,
    ImageInput,
    InvalidInput,
    SearchQuery,
    SimilarityCore,
    UpsertItem,
)
from service.store import matching_ids
from tests.indexer.conftest import catalog_url, postgres_server  # noqa: F401  (fixtures)
from tests.service.conftest import digit
from training.models.embedder import Embedder

CAP = CoreOptions().max_metadata_pairs


@pytest.fixture()
def small_core(catalog_url, tmp_path, digits_dir, tiny_checkpoint):  # noqa: F811
    """A core over 12 digits (three classes), on SQLite and on PostgreSQL."""
    images = tmp_path / "images"
    for label in ("1", "2", "3"):
        (images / label).mkdir(parents=True)
        for i in range(4):
            shutil.copy(digit(digits_dir, label, i), images / label)
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(images),
                            index_root=str(tmp_path / "idx"), catalog_url=catalog_url,
                            num_workers=0, progress=False))
    core = SimilarityCore(Embedder.from_checkpoint(tiny_checkpoint),
                          load_index_version(tmp_path / "idx"), open_catalog(catalog_url))
    yield core
    core.close()


def _meta(n: int, **override) -> dict[str, str]:
    return {**{f"m{i:03d}": f"v{i}" for i in range(n)}, **override}


def test_the_largest_allowed_filter_runs_and_one_more_is_refused(small_core, digits_dir):
    data = [digit(digits_dir, "7", i).read_bytes() for i in range(3)]
    small_core.upsert([UpsertItem("m/all", data[0], label="7", metadata=_meta(CAP)),
                       UpsertItem("m/other", data[1], label="7", metadata=_meta(CAP, m005="x")),
                       UpsertItem("m/none", data[2], label="8")])
    q = ImageInput(data=data[0])
    hits = small_core.search(q, 20, metadata=_meta(CAP), labels=[f"l{i}" for i in range(255)]
                             + ["7"], exclude_keys=[f"no/{i}" for i in range(999)] + ["1/0000"])
    assert [h.key for h in hits.hits] == ["m/all"]
    with small_core.sessions() as s:  # the same conditions straight on the catalogue
        ids = matching_ids(s, collection="default", labels=["7", "8"], metadata=_meta(CAP))
        want = s.scalars(select(ImageRow.id).where(ImageRow.key == "m/all")).all()
    assert ids == want
    for kw, what, limit in [({"metadata": _meta(CAP + 1)}, "metadata filters", CAP),
                            ({"metadata": _meta(1000)}, "metadata filters", CAP),
                            ({"labels": [f"l{i}" for i in range(10_000)]}, "labels", 256),
                            ({"exclude_keys": [f"k{i}" for i in range(1001)]}, "excluded keys",
                             1000)]:
        with pytest.raises(InvalidInput, match=f"query: .*{what}; the limit is {limit}"):
            small_core.search(q, 5, **kw)
    # BatchSearch: the same caps per query, and the message names the query
    ok = SearchQuery(q, 3)
    with pytest.raises(InvalidInput, match=f"query 1: 1000 metadata filters; the limit is {CAP}"):
        small_core.batch_search([ok, SearchQuery(q, 3, metadata=_meta(1000))])
    with pytest.raises(InvalidInput, match=f"item 0 .*: {CAP + 1} metadata pairs; the limit"):
        small_core.upsert([UpsertItem("m/big", data[0], metadata=_meta(CAP + 1))])


BAD = ["a\0b", "line\nbreak", "esc\x1b[31m", "del\x7f", "c1\x85", "sep\u2028x"]


@pytest.mark.parametrize("bad", BAD)
def test_control_characters_are_refused_before_the_database(small_core, digits_dir, bad):
    data = digit(digits_dir, "5").read_bytes()
    q = ImageInput(data=data)
    cases = [
        lambda: small_core.upsert([UpsertItem(bad, data)]),
        lambda: small_core.upsert([UpsertItem("ok/1", data, label=bad)]),
        lambda: small_core.upsert([UpsertItem("ok/1", data, metadata={bad: "v"})]),
        lambda: small_core.delete([bad]),
        lambda: small_core.search(ImageInput(key=bad), 3),
        lambda: small_core.search(q, 3, labels=[bad]),
        lambda: small_core.search(q, 3, metadata={bad: "v"}),
        lambda: small_core.search(q, 3, exclude_keys=[bad]),
        lambda: small_core.verify_identity(q, bad),
    ]
    for case in cases:
        with pytest.raises(InvalidInput, match=r"control character U\+"):
            case()
    with small_core.sessions() as s:
        assert s.scalars(select(ImageRow.key).where(ImageRow.key.like("ok/%"))).all() == []


def test_metadata_values_may_break_lines_and_names_may_not_quote(small_core, digits_dir):
    data = digit(digits_dir, "5").read_bytes()
    r = small_core.upsert([UpsertItem("cap/1", data, metadata={"caption": "two\nlines\tok"})])
    assert r.inserted == 1
    hits = small_core.search(ImageInput(data=data), 3, metadata={"caption": "two\nlines\tok"})
    assert [h.key for h in hits.hits] == ["cap/1"]
    with pytest.raises(InvalidInput, match="control character U"):
        small_core.upsert([UpsertItem("cap/2", data, metadata={"caption": "nul\0"})])
    for call in (lambda: small_core.upsert([UpsertItem("q/1", data, metadata={'a"b': "v"})]),
                 lambda: small_core.search(ImageInput(data=data), 3, metadata={'a"b': "v"})):
        with pytest.raises(InvalidInput, match="double quote"):
            call()


def test_lengths_are_checked(small_core, digits_dir):
    data = digit(digits_dir, "5").read_bytes()
    q = ImageInput(data=data)
    for call, match in [
        (lambda: small_core.upsert([UpsertItem("k" * 513, data)]), "at most 512 characters"),
        (lambda: small_core.upsert([UpsertItem("k", data, label="l" * 513)]), "at most 512"),
        (lambda: small_core.upsert([UpsertItem("k", data, metadata={"n" * 257: "v"})]),
         "at most 256"),
        (lambda: small_core.upsert([UpsertItem("k", data, metadata={"n": "v" * 4097})]),
         "at most 4096"),
        (lambda: small_core.delete(["k" * 100_000], ignore_missing=True), "at most 512"),
        (lambda: small_core.search(q, 3, exclude_keys=[""]), "got an empty one"),
        (lambda: small_core.search(q, 3, metadata={"": "v"}), "got an empty one"),
        (lambda: small_core.search(ImageInput(key="k" * 513), 3), "at most 512"),
    ]:
        with pytest.raises(InvalidInput, match=match):
            call()
    # an empty label is a label (images catalogued without one): it filters, it is not refused
    assert small_core.search(q, 3, labels=[""]).hits == []


@pytest.mark.parametrize("version", ["../../etc", "/tmp", "a/../../b", "..", "v\0"])
def test_reload_takes_a_version_name_never_a_path(small_core, version):
    with pytest.raises(InvalidInput, match="index version"):
        small_core.reload("", version)



def test_a_huge_collection_name_is_refused_with_a_short_message(small_core, digits_dir):
    # a 1 MB name used to come back as a NOT_FOUND quoting all of it: too large for gRPC's
    # 8 KiB status message (the client saw RESOURCE_EXHAUSTED) and a 1 MB log line
    from service.auth import Principal

    huge = "c" * 1_000_000
    q = ImageInput(data=digit(digits_dir, "5").read_bytes())
    calls = [lambda: small_core.search(q, 3, collection=huge),
             lambda: small_core.describe(huge),
             lambda: small_core.reload(huge, None),
             lambda: Principal(1, "app", "read", frozenset({"faces"})).require("read", [huge])]
    for call in calls:
        with pytest.raises(InvalidInput, match="collection must be at most 128") as e:
            call()
        assert len(str(e.value)) < 200
