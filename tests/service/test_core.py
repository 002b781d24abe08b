import numpy as np
import pytest

from indexer.build import BuildConfig, build_index
from indexer.catalog import open_catalog
from indexer.versions import load_index_version
from service.core import FailedPrecondition, ImageInput, InvalidInput, NotFound, SimilarityCore
from training.models.embedder import Embedder


@pytest.fixture(scope="module")
def core(tmp_path_factory, digits_dir, tiny_checkpoint):
    tmp = tmp_path_factory.mktemp("core")
    url = f"sqlite:///{tmp / 'cat.db'}"
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                            index_root=str(tmp / "idx"), catalog_url=url, num_workers=0,
                            progress=False))
    return SimilarityCore(Embedder.from_checkpoint(tiny_checkpoint), load_index_version(tmp / "idx"),
                          open_catalog(url))


def _bytes(digits_dir, label="7", i=0):
    return sorted((digits_dir / label).iterdir())[i].read_bytes()


def test_verify_same_image(core, digits_dir):
    img = _bytes(digits_dir)
    r = core.verify(ImageInput(data=img), ImageInput(data=img))
    assert r.same and r.distance == pytest.approx(0, abs=1e-5) and r.similarity == pytest.approx(1, abs=1e-5)
    assert r.threshold == core.embedder.spec.threshold and r.model_version.startswith("tiny@")


def test_verify_by_key_equals_by_bytes(core, digits_dir):
    f = sorted((digits_dir / "7").iterdir())[0]
    by_key = core.verify(ImageInput(key=f"7/{f.stem}"), ImageInput(data=_bytes(digits_dir, "1")))
    by_bytes = core.verify(ImageInput(data=f.read_bytes()), ImageInput(data=_bytes(digits_dir, "1")))
    assert by_key.distance == pytest.approx(by_bytes.distance, abs=1e-4)


def test_explicit_threshold_decides(core, digits_dir):
    a, b = ImageInput(data=_bytes(digits_dir, "7")), ImageInput(data=_bytes(digits_dir, "1"))
    d = core.verify(a, b).distance
    assert core.verify(a, b, threshold=d + 1e-3).same
    assert not core.verify(a, b, threshold=d - 1e-3).same


def test_search_ranks_query_first_and_sorted(core, digits_dir):
    f = sorted((digits_dir / "4").iterdir())[5]
    r = core.search(ImageInput(data=f.read_bytes()), 7)
    assert len(r.hits) == 7
    assert r.hits[0].key == f"4/{f.stem}" and r.hits[0].distance == pytest.approx(0, abs=1e-3)
    d = [h.distance for h in r.hits]
    assert d == sorted(d) and [h.rank for h in r.hits] == list(range(1, 8))
    assert r.index_version == core.index.manifest.version


@pytest.mark.parametrize("bad", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_bad_bytes_are_invalid_input(core, bad):
    with pytest.raises(InvalidInput):
        core.search(ImageInput(data=bad), 3)


def test_bad_arguments(core, digits_dir):
    with pytest.raises(NotFound):
        core.search(ImageInput(key="no/such"), 3)
    with pytest.raises(InvalidInput, match="k must be"):
        core.search(ImageInput(data=_bytes(digits_dir)), 5000)
    with pytest.raises(InvalidInput, match="missing"):
        core.search(ImageInput(), 3)
    with pytest.raises(InvalidInput, match="threshold"):
        core.verify(ImageInput(data=_bytes(digits_dir)), ImageInput(data=_bytes(digits_dir)),
                    threshold=-1)


def test_refuses_index_built_with_other_checkpoint(core):
    from dataclasses import replace

    from indexer.versions import IndexVersion

    idx = core.index
    wrong = IndexVersion(idx.path, replace(idx.manifest, checkpoint_sha256="f" * 64), idx.index)
    with pytest.raises(FailedPrecondition, match="checkpoint"):
        SimilarityCore(core.embedder, wrong, core.sessions)


def test_decompression_bomb_refused(core):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buf, "PNG")  # 48 MP, compresses to a few KB
    with pytest.raises(InvalidInput, match="exceeds"):
        core.search(ImageInput(data=buf.getvalue()), 1)
    assert np.isfinite(core.threshold)
