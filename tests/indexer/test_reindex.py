"""imgsim reindex: new checkpoint -> new version; resumable; sharded workers == one worker."""

import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import replace

import faiss
import numpy as np
import pytest

from indexer import reindex as rx
from indexer.build import BuildConfig, build_index
from indexer.catalog import all_images, image_by_key, index_versions, open_catalog, upsert_images
from indexer.factory import stored_ids
from indexer.versions import current_version_name, load_index_version
from training.checkpoint import load_checkpoint, save_checkpoint
from training.models.embedder import Embedder


@pytest.fixture(scope="module")
def new_checkpoint(tmp_path_factory, tiny_checkpoint):
    """The tiny model with perturbed weights: a different checkpoint with other embeddings."""
    ckpt = load_checkpoint(tiny_checkpoint)
    g = __import__("torch").Generator().manual_seed(0)
    state = {k: v + 0.05 * __import__("torch").randn(v.shape, generator=g)
             if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    ckpt.state_dict = state
    ckpt.spec = replace(ckpt.spec, name="tiny-v2")
    return save_checkpoint(tmp_path_factory.mktemp("v2") / "model.pt", ckpt)


@pytest.fixture(scope="module")
def built_once(tmp_path_factory, digits_dir, tiny_checkpoint):
    tmp = tmp_path_factory.mktemp("built")
    build_index(BuildConfig(checkpoint=str(tiny_checkpoint), images=str(digits_dir),
                            index_root=str(tmp / "idx"), catalog_url=f"sqlite:///{tmp / 'cat.db'}",
                            factory="Flat", collection="digits", num_workers=0, progress=False))
    return tmp


@pytest.fixture
def catalogue(tmp_path, built_once):
    """A collection built with the old checkpoint (a fresh copy per test): (dir, catalogue URL)."""
    shutil.copytree(built_once / "idx", tmp_path / "idx")
    for f in built_once.glob("cat.db*"):  # with the WAL
        shutil.copy(f, tmp_path / f.name)
    return tmp_path, f"sqlite:///{tmp_path / 'cat.db'}"


def _cfg(tmp, url, ckpt, **kw):
    base = dict(checkpoint=str(ckpt), catalog_url=url, index_root=str(tmp / "idx"),
                collection="digits", factory="Flat", chunk_size=64, num_workers=0,
                progress=False, tuning_queries=100)
    return rx.ReindexConfig(**{**base, **kw})


def _embedded_by(ckpt, url, collection="digits"):
    with open_catalog(url)() as s:
        rows = all_images(s, collection=collection)
    emb = Embedder.from_checkpoint(ckpt)
    return np.array([r.id for r in rows]), emb.embed_paths([r.path for r in rows])


def test_reindex_publishes_a_version_of_the_new_checkpoint(catalogue, new_checkpoint):
    tmp, url = catalogue
    old = current_version_name(tmp / "idx")
    path = rx.reindex(_cfg(tmp, url, new_checkpoint))
    version = load_index_version(tmp / "idx")
    assert version.path == path and version.manifest.version != old
    emb = Embedder.from_checkpoint(new_checkpoint)
    assert version.manifest.checkpoint_sha256 == emb.checkpoint_sha256
    ids, vectors = _embedded_by(new_checkpoint, url)
    assert version.index.ntotal == len(ids) == 400
    for i in range(0, 400, 37):  # every vector is the new model's embedding of that image
        np.testing.assert_allclose(version.index.reconstruct(int(ids[i])), vectors[i], atol=1e-5)
    with open_catalog(url)() as s:
        rows = index_versions(s, collection="digits")
        assert [(r.name, r.state) for r in rows] == [(old, "retired"),
                                                     (version.manifest.version, "published")]
        assert rows[-1].count == 400 and rows[-1].recall_at_10 == 1.0
    assert not (tmp / "idx" / "reindex").exists() or not any((tmp / "idx" / "reindex").iterdir())


def test_a_killed_reindex_resumes_without_recomputing_finished_chunks(catalogue, new_checkpoint,
                                                                     monkeypatch):
    tmp, url = catalogue
    cfg = _cfg(tmp, url, new_checkpoint, keep_work=True)
    real_atomic, written = rx.atomic_write, []

    def dies_in_the_fourth_chunk(path, write):
        if path.parent.name == "chunks":
            if len(written) == 3:
                raise KeyboardInterrupt("killed")  # what Ctrl-C or a scheduler's kill does
            written.append(path.name)
        return real_atomic(path, write)

    monkeypatch.setattr(rx, "atomic_write", dies_in_the_fourth_chunk)
    with pytest.raises(KeyboardInterrupt):
        rx.reindex(cfg)
    monkeypatch.setattr(rx, "atomic_write", real_atomic)
    plan = rx.make_plan(cfg)
    assert [plan.done(j) for j in range(plan.num_chunks)] == [True] * 3 + [False] * 4
    assert not list((plan.work / "chunks").glob(".*"))  # no half-written chunk left behind
    first = {j: plan.chunk_path(j).stat().st_mtime_ns for j in range(3)}
    streamed, real_stream = [], Embedder.stream_paths

    def recorded(self, paths, **kw):
        streamed.extend(paths)
        return real_stream(self, paths, **kw)

    monkeypatch.setattr(Embedder, "stream_paths", recorded)
    rx.reindex(cfg)
    missing = [plan.chunk_rows(j) for j in range(3, plan.num_chunks)]
    # the 4 missing chunks only (nothing to catch up), each distinct content once
    firsts = []
    for rows in missing:
        seen = {}
        for sha, path in zip(plan.sha256[rows], plan.paths[rows], strict=True):
            seen.setdefault(sha, path)
        firsts += seen.values()
    assert sorted(streamed) == sorted(firsts)
    assert len(streamed) == sum(len(set(plan.sha256[rows])) for rows in missing) > 0
    assert {j: plan.chunk_path(j).stat().st_mtime_ns for j in range(3)} == first
    ids, vectors = _embedded_by(new_checkpoint, url)
    version = load_index_version(tmp / "idx")
    _, found = version.index.search(vectors, 1)
    assert (found[:, 0] == ids).all()


def test_duplicate_content_is_embedded_once_and_shared(catalogue, new_checkpoint, digits_dir,
                                                      monkeypatch):
    tmp, url = catalogue
    src = sorted((digits_dir / "7").iterdir())[0]
    with open_catalog(url).begin() as s:  # three more keys with one image's bytes
        upsert_images(s, [{"key": f"copy/{i}", "path": str(src), "label": "7",
                           "sha256": "d" * 64} for i in range(3)], collection="digits")
    embedded, real = [], Embedder.stream_paths
    monkeypatch.setattr(Embedder, "stream_paths",
                        lambda emb, paths, **kw: (embedded.extend(paths), real(emb, paths, **kw))[1])
    rx.reindex(_cfg(tmp, url, new_checkpoint))
    assert len(embedded) == 401  # 400 distinct images + one for the three copies
    version = load_index_version(tmp / "idx")
    with open_catalog(url)() as s:
        copies = [image_by_key(s, f"copy/{i}", collection="digits").id for i in range(3)]
    vecs = np.stack([version.index.reconstruct(i) for i in copies])
    np.testing.assert_array_equal(vecs, np.repeat(vecs[:1], 3, axis=0))
    np.testing.assert_allclose(vecs[0], Embedder.from_checkpoint(new_checkpoint)
                               .embed_paths([src])[0], atol=1e-5)


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])  # built from chunks / shards merged
def test_changes_to_the_catalogue_during_a_reindex_are_caught_up(catalogue, new_checkpoint,
                                                                digits_dir, factory):
    tmp, url = catalogue
    cfg = _cfg(tmp, url, new_checkpoint, factory=factory, work_dir=str(tmp / "work"),
               keep_work=True)
    if factory != "Flat":
        rx.prepare(cfg)  # trained IVF: the worker writes a shard index, merge merges lists
    rx.run_shard(cfg, 0, 1)  # embedded per the plan; now the catalogue changes
    Session = open_catalog(url)
    extra = sorted((digits_dir / "5").iterdir())[0]
    with Session.begin() as s:
        gone = image_by_key(s, "3/" + sorted((digits_dir / "3").iterdir())[0].stem,
                            collection="digits")
        gone_id = gone.id
        s.delete(gone)
        (added,) = upsert_images(s, [{"key": "late/one", "path": str(extra), "label": "5",
                                      "sha256": "e" * 64}], collection="digits")
        added_id = added.id
    rx.merge(cfg)
    version = load_index_version(tmp / "idx")
    assert version.manifest.factory == factory
    assert len(list((tmp / "work" / "shards").glob("*.faiss"))) == (factory != "Flat")
    ids = set(stored_ids(version.index).tolist())
    assert added_id in ids and gone_id not in ids and len(ids) == 400
    emb = Embedder.from_checkpoint(new_checkpoint)
    np.testing.assert_allclose(version.index.reconstruct(added_id),
                               emb.embed_paths([extra])[0], atol=1e-5)


def test_status_reports_progress_without_starting_anything(catalogue, new_checkpoint):
    tmp, url = catalogue
    cfg = _cfg(tmp, url, new_checkpoint, work_dir=str(tmp / "w"), keep_work=True)
    assert rx.status(cfg)["state"] == "not started" and not (tmp / "w").exists()
    plan = rx.make_plan(cfg)
    embedder = Embedder.from_checkpoint(new_checkpoint)
    rx.embed_chunks(plan, embedder, [0, 1], cfg=cfg)
    st = rx.status(cfg)
    assert (st["state"], st["images"], st["chunks"], st["chunks_done"]) == ("embedding", 400, 7, 2)


def test_a_work_dir_of_another_run_is_refused(catalogue, new_checkpoint, tiny_checkpoint):
    tmp, url = catalogue
    rx.make_plan(_cfg(tmp, url, new_checkpoint, work_dir=str(tmp / "w")))
    with pytest.raises(ValueError, match="belongs to another reindex"):
        rx.make_plan(_cfg(tmp, url, tiny_checkpoint, work_dir=str(tmp / "w")))


@pytest.mark.parametrize("text,err", [("2/2", "0 <= i < N"), ("a/b", "i/N"), ("1", "i/N")])
def test_bad_shard_specs(text, err):
    with pytest.raises(ValueError, match=err):
        rx.parse_shard(text)


def test_shards_cover_all_chunks_contiguously():
    for chunks in (1, 7, 8, 100):
        for n in (1, 2, 3, 8):
            parts = [list(rx.shard_chunks(chunks, i, n)) for i in range(n)]
            assert sum(parts, []) == list(range(chunks))


def _single_threaded(target, *args):
    # an OpenMP thread pool does not survive fork(): the child runs its work on one thread
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    target(*args)


def _fork(target, *args):
    """A real second process (forked, so without re-importing torch: seconds saved per test)."""
    proc = multiprocessing.get_context("fork").Process(target=_single_threaded,
                                                       args=(target, *args))
    proc.start()
    return proc


@pytest.mark.slow
def test_two_local_workers_build_the_same_index_as_one(catalogue, new_checkpoint, tmp_path):
    """prepare; N concurrent `--shard i/N` worker processes; merge (FAISS merges IVF lists)."""
    tmp, url = catalogue
    results = []
    for n in (1, 2):
        cfg = _cfg(tmp, url, new_checkpoint, factory="IVF8,Flat", index_root=str(tmp / f"i{n}"),
                   work_dir=str(tmp / f"work{n}"), keep_work=True)
        assert rx.prepare(cfg) == "IVF8,Flat"
        workers = [_fork(rx.run_shard, cfg, i, n) for i in range(n)]
        for w in workers:
            w.join(timeout=300)
            assert w.exitcode == 0
        assert len(list((tmp / f"work{n}" / "shards").glob("*.faiss"))) == n
        rx.merge(cfg)
        results.append(load_index_version(tmp / f"i{n}"))
    one, two = results
    assert one.manifest.search_params == two.manifest.search_params
    assert one.manifest.recall_at_10 == two.manifest.recall_at_10
    assert two.manifest.build_params["shards"] == 2
    # the very same index, byte for byte: same centroids, same lists in the same order
    assert faiss.serialize_index(one.index).tobytes() == faiss.serialize_index(two.index).tobytes()


def _reindex_hanging_mid_write(cfg, chunk: int, ready: str) -> None:
    """rx.reindex, but the write of ``chunk`` stops half-way (and says so) until killed."""
    real = rx.atomic_write

    def atomic(path, write):
        if path.name != f"{chunk:06d}.npy":
            return real(path, write)
        fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.write(fd, b"\x93NUMPY half a chunk")
        open(ready, "w").close()
        time.sleep(600)

    rx.atomic_write = atomic
    rx.reindex(cfg)


@pytest.mark.slow
def test_sigkill_mid_reindex_then_resume(catalogue, new_checkpoint):
    """A real SIGKILL while chunk 3 is being written (deterministic: the child waits there)."""
    tmp, url = catalogue
    cfg = _cfg(tmp, url, new_checkpoint, chunk_size=16, work_dir=str(tmp / "work"),
               keep_work=True, tuning_queries=50)
    chunks, ready = tmp / "work" / "chunks", tmp / "ready"
    proc = _fork(_reindex_hanging_mid_write, cfg, 3, str(ready))
    deadline = time.monotonic() + 240
    while not ready.exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    done = sorted(chunks.glob("0*.npy"))
    assert [p.name for p in done] == ["000000.npy", "000001.npy", "000002.npy"]
    assert len(list(chunks.glob(".000003.npy.*"))) == 1  # the write in flight, never renamed
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    rx.reindex(cfg)
    # the chunks finished before the kill were reused, not recomputed; the debris is gone
    assert {p.name: p.stat().st_mtime_ns for p in done} == stamps
    assert len(list(chunks.glob("0*.npy"))) == 25 and not list(chunks.glob(".*"))
    version = load_index_version(tmp / "idx")
    assert version.index.ntotal == 400
    ids, vectors = _embedded_by(new_checkpoint, url)
    _, found = version.index.search(vectors, 1)
    assert (found[:, 0] == ids).all()


def test_cli_reindex_rejects_a_bad_shard(capsys):
    from imgsim.cli import main

    assert main(["reindex", "--checkpoint", "x.pt", "--shard", "2/2"]) == 2
    assert "0 <= i < N" in capsys.readouterr().err


def test_a_pixel_cache_lets_the_next_reindex_decode_nothing(catalogue, new_checkpoint,
                                                           tiny_checkpoint, monkeypatch):
    """Retraining keeps the preprocessing: the second reindex reads the first one's pixels,
    opens no image file, and gets the same vectors as decoding would."""
    import indexer.pixel_cache as pc

    tmp, url = catalogue
    cache = tmp / "pixels"
    rx.reindex(_cfg(tmp, url, new_checkpoint, pixel_cache=str(cache)))
    with open_catalog(url)() as s:
        hashes = {r.sha256 for r in all_images(s, collection="digits")}
    files = sorted(cache.rglob("*.u8"))
    assert len(files) == len(hashes) and not list(cache.rglob(".*"))
    ids, vectors = _embedded_by(new_checkpoint, url)
    version = load_index_version(tmp / "idx")
    np.testing.assert_allclose(np.stack([version.index.reconstruct(int(i)) for i in ids]),
                               vectors, atol=1e-5)

    opened = []
    real_open = pc.Image.open
    monkeypatch.setattr(pc.Image, "open",  # PIL's, so that any decoding anywhere counts
                        lambda p, *a: (opened.append(p), real_open(p, *a))[1])
    rx.reindex(_cfg(tmp, url, tiny_checkpoint, pixel_cache=str(cache)))  # another model
    assert opened == []
    ids, vectors = _embedded_by(tiny_checkpoint, url)
    version = load_index_version(tmp / "idx")
    assert version.manifest.checkpoint_sha256 == Embedder.from_checkpoint(tiny_checkpoint) \
        .checkpoint_sha256
    np.testing.assert_allclose(np.stack([version.index.reconstruct(int(i)) for i in ids]),
                               vectors, atol=1e-5)

    files[0].write_bytes(files[0].read_bytes()[:100])  # a torn file is decoded again
    opened.clear()
    rx.reindex(_cfg(tmp, url, new_checkpoint, pixel_cache=str(cache)))
    assert len(opened) == 1 and files[0].stat().st_size == len(files[1].read_bytes())


def test_the_pixel_cache_is_shared_only_by_the_same_preprocessing():
    from indexer.pixel_cache import signature
    from training.models.spec import ModelSpec

    base = ModelSpec(arch="smallcnn", embedding_dim=32, input_size=64, resize_size=73)
    assert signature(base) == signature(replace(base, arch="resnet18", embedding_dim=128,
                                                name="retrained"))
    for change in ({"input_size": 72}, {"resize_size": 80}, {"face_align": "dlib5"},
                   {"in_channels": 1, "mean": (0.5,), "std": (0.25,)}):
        assert signature(replace(base, **change)) != signature(base), change
