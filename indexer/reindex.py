"""Re-embed a whole collection with a new checkpoint into a new index version: resumable, shardable.

A reindex works in a directory of its own (default ``<index-root>/reindex/<collection>-<ckpt>``):

- ``plan.npz`` + ``run.json``: the catalogue snapshot (ids, paths, content hashes, by id) and
  the run's settings, written once; every worker and every resumption reads the same plan;
- ``chunks/NNNNNN.npy``: embeddings of plan rows ``[j * chunk_size, (j + 1) * chunk_size)``,
  each written atomically when finished, so a killed run loses at most the chunk in flight and
  a restarted one skips every chunk already on disk;
- optionally ``trained.faiss`` (:func:`prepare`: an IVF trained on evenly spaced chunks) and
  ``shards/shard-I-of-N.faiss`` (worker I's vectors added to a copy of it).

With ``pixel_cache`` set, images are read through :class:`indexer.pixel_cache.PixelCache`:
preprocessed pixels kept from an earlier reindex with the same preprocessing, not decoded.

:func:`merge` assembles the index: with IVF shards, FAISS's own merge of inverted lists
(``IndexIVF.merge_from``), otherwise a build from all chunks (``auto`` measures candidates).
It then catches up with catalogue changes made since the plan, tunes the search parameters on
held-out queries, and, holding the index root's publish lock (the one servers take to apply
Upsert and Delete), catches up with the changes made while it built, publishes the version
and records it in the catalogue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import select

from indexer.build import manifest_for, model_row
from indexer.catalog import (
    DEFAULT_COLLECTION,
    ImageRow,
    image_file,
    image_file_column,
    open_catalog,
)
from indexer.construct import (
    AUTO,
    BuiltIndex,
    IndexingConfig,
    auto_candidates,
    index_vectors,
    split_for_tuning,
)
from indexer.embedding import drop_faceless, embed_unique, progress_bar
from indexer.factory import new_index, parse_factory, uses_direct_map
from indexer.faults import AFTER_INDEX_PUBLISH, fault_point
from indexer.files import atomic_write
from indexer.incremental import change_vectors, lock_collection
from indexer.pixel_cache import PixelCache
from indexer.publish import publish_version
from indexer.tune import held_out_queries, tune_search_params
from indexer.versions import publish_lock
from training.checkpoint import file_sha256
from training.models.embedder import Embedder

log = logging.getLogger(__name__)

RUN_FILE, PLAN_FILE, TRAINED_FILE = "run.json", "plan.npz", "trained.faiss"
PLAN_WAIT_SECONDS = 600  # a worker waits this long for another worker to write the plan


@dataclass(frozen=True)
class ReindexConfig:
    checkpoint: str
    catalog_url: str
    index_root: str
    collection: str = DEFAULT_COLLECTION
    work_dir: str | None = None  # default: <index_root>/reindex/<collection>-<checkpoint sha12>
    factory: str = AUTO
    chunk_size: int = 2048  # images per embedding chunk (the unit of resumption)
    batch_size: int = 64
    num_workers: int = 2
    memory_budget_mb: float = 2048.0
    target_recall: float = 0.95
    tuning_queries: int = 500
    seed: int = 0
    keep_versions: int = 5
    keep_work: bool = False  # keep the work directory (embeddings) after publishing
    pixel_cache: str | None = None  # directory of preprocessed pixels (indexer.pixel_cache)
    progress: bool = True
    # where the new version goes: faiss (a version under index_root) or a vector store spec
    # (milvus:FILE_OR_URI: a new Milvus collection, then the alias moved; see merge_into_store)
    vector_store: str = "faiss"

    def indexing(self, factory: str | None = None) -> IndexingConfig:
        return IndexingConfig(factory=factory or self.factory,
                              memory_budget_mb=self.memory_budget_mb,
                              target_recall=self.target_recall,
                              tuning_queries=self.tuning_queries, seed=self.seed,
                              progress=self.progress)


@dataclass(frozen=True)
class Plan:
    """The images a reindex embeds, in id order, and where its files live."""

    work: Path
    ids: np.ndarray  # (n,) int64 catalogue ids
    paths: np.ndarray  # (n,) str
    sha256: np.ndarray  # (n,) str
    chunk_size: int
    checkpoint_sha256: str

    @property
    def num_chunks(self) -> int:
        return math.ceil(len(self.ids) / self.chunk_size)

    def chunk_rows(self, j: int) -> slice:
        return slice(j * self.chunk_size, min((j + 1) * self.chunk_size, len(self.ids)))

    def chunk_path(self, j: int) -> Path:
        return self.work / "chunks" / f"{j:06d}.npy"

    def done(self, j: int) -> bool:
        return self.chunk_path(j).is_file()

    def shard_path(self, shard: int, num_shards: int) -> Path:
        return self.work / "shards" / f"shard-{shard:05d}-of-{num_shards:05d}.faiss"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= i < N")
    return i, n


def shard_chunks(num_chunks: int, shard: int, num_shards: int) -> range:
    """Worker ``shard``'s contiguous block of chunks, so that merging shards in order
    reproduces a single worker's index exactly."""
    return range(shard * num_chunks // num_shards, (shard + 1) * num_chunks // num_shards)


def work_dir(cfg: ReindexConfig, checkpoint_sha256: str) -> Path:
    if cfg.work_dir:
        return Path(cfg.work_dir)
    return Path(cfg.index_root) / "reindex" / f"{cfg.collection}-{checkpoint_sha256[:12]}"


# -- plan -------------------------------------------------------------------------------------
def make_plan(cfg: ReindexConfig, *, checkpoint_sha256: str | None = None) -> Plan:
    """Load the run's plan, or snapshot the catalogue into one (exactly one worker writes it)."""
    sha = checkpoint_sha256 or file_sha256(cfg.checkpoint)
    work = work_dir(cfg, sha)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / RUN_FILE).is_file():
        try:
            fd = os.open(work / "plan.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            _wait_for(work / RUN_FILE)
        else:
            os.close(fd)
            _write_plan(cfg, work, sha)
    return _read_plan(cfg, work, sha)


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + PLAN_WAIT_SECONDS
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"another worker holds {path.parent / 'plan.lock'} but wrote no "
                               f"{path.name} in {PLAN_WAIT_SECONDS}s; remove the lock if it died")
        time.sleep(0.5)


def _write_plan(cfg: ReindexConfig, work: Path, sha: str) -> None:
    Session = open_catalog(cfg.catalog_url)
    with Session() as s:
        rows = s.execute(select(ImageRow.id, image_file_column(cfg.index_root), ImageRow.sha256)
                         .where(ImageRow.collection == cfg.collection)
                         .order_by(ImageRow.id)).all()
    if not rows:
        raise ValueError(f"collection {cfg.collection!r} has no images in {cfg.catalog_url}")
    ids = np.array([r[0] for r in rows], np.int64)
    paths = np.array([r[1] for r in rows], dtype=str)
    hashes = np.array([r[2] for r in rows], dtype=str)
    atomic_write(work / PLAN_FILE, lambda f: np.savez(f, ids=ids, paths=paths, sha256=hashes))
    digest = hashlib.sha256(ids.tobytes() + "".join(hashes.tolist()).encode()).hexdigest()
    run = {"collection": cfg.collection, "checkpoint_sha256": sha,
           "checkpoint": str(Path(cfg.checkpoint).resolve()), "chunk_size": cfg.chunk_size,
           "count": len(ids), "plan_sha256": digest, "created": time.time()}
    atomic_write(work / RUN_FILE, lambda f: f.write(json.dumps(run, indent=2).encode()))
    log.info("reindex plan: %d images of %r in %d chunks under %s", len(ids), cfg.collection,
             math.ceil(len(ids) / cfg.chunk_size), work)


def _read_plan(cfg: ReindexConfig, work: Path, sha: str) -> Plan:
    run = json.loads((work / RUN_FILE).read_text())
    if run["checkpoint_sha256"] != sha or run["collection"] != cfg.collection:
        raise ValueError(f"{work} belongs to another reindex (collection {run['collection']!r}, "
                         f"checkpoint {run['checkpoint_sha256'][:12]}); pick another --work-dir "
                         "or delete it")
    with np.load(work / PLAN_FILE, allow_pickle=False) as z:
        ids, paths, hashes = z["ids"], z["paths"], z["sha256"]
    return Plan(work, ids, paths, hashes, int(run["chunk_size"]), sha)


# -- embedding ---------------------------------------------------------------------------------
def embed_chunks(plan: Plan, embedder: Embedder, chunks: range | list[int], *,
                 cfg: ReindexConfig, desc: str = "reindex") -> int:
    """Embed the listed chunks that are not on disk yet; returns how many were embedded.

    One DataLoader streams the missing chunks' images, chunk after chunk (identical content
    within a chunk once), so that its workers never stop to restart at a chunk boundary; each
    chunk is written as soon as the stream has covered it."""
    todo = [j for j in chunks if not plan.done(j)]
    total = sum(_len(plan.chunk_rows(j)) for j in chunks)
    done = total - sum(_len(plan.chunk_rows(j)) for j in todo)
    if done:
        log.info("resuming: %d of %d images already embedded", done, total)
    parts = []  # (chunk, plan rows of its distinct contents, each row's content)
    for j in todo:  # a killed writer leaves its temporary file (no cleanup runs on SIGKILL)
        for stale in plan.chunk_path(j).parent.glob(f".{plan.chunk_path(j).name}.*"):
            stale.unlink(missing_ok=True)  # only this worker writes chunk j: safe to remove
        rows = plan.chunk_rows(j)
        _, first, inverse = np.unique(plan.sha256[rows], return_index=True, return_inverse=True)
        parts.append((j, first + rows.start, inverse.ravel()))
    if not parts:
        return 0
    stream = np.concatenate([first for _, first, _ in parts])
    pending: list[np.ndarray] = []  # vectors streamed for the chunk being covered
    missing: list[int] = []  # stream rows without a face (a spec that requires one): NaN rows
    with progress_bar(total, desc=desc, enabled=cfg.progress, initial=done) as bar:
        paths = plan.paths[stream].tolist()
        if cfg.pixel_cache:  # pixels decoded by an earlier reindex with this preprocessing
            cached = PixelCache(cfg.pixel_cache, embedder.spec, embedder.pixels)
            batches = embedder.stream_dataset(cached.dataset(paths, plan.sha256[stream].tolist()),
                                              batch_size=cfg.batch_size,
                                              num_workers=cfg.num_workers, missing=missing)
        else:
            batches = embedder.stream_paths(paths, batch_size=cfg.batch_size,
                                            num_workers=cfg.num_workers, missing=missing)
        for rows, batch in batches:
            vectors = embedder.embed_tensors(batch)
            if missing:
                vectors[np.isin(rows, missing)] = np.nan
            pending.append(vectors)
            bar.update(len(batch))
            while parts and sum(map(len, pending)) >= len(parts[0][1]):
                j, first, inverse = parts.pop(0)
                streamed = np.concatenate(pending)
                vectors = streamed[:len(first)][inverse]
                atomic_write(plan.chunk_path(j), lambda f, v=vectors: np.save(f, v))
                bar.update(len(inverse) - len(first))  # duplicates: not streamed
                pending = [streamed[len(first):]]
    return len(todo)


def _len(s: slice) -> int:
    return s.stop - s.start


def load_vectors(plan: Plan, chunks: range | list[int] | None = None) -> np.ndarray:
    """(rows, d) float32 embeddings of the given chunks (default: all), in plan order."""
    chunks = range(plan.num_chunks) if chunks is None else chunks
    missing = [j for j in chunks if not plan.done(j)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} embedding chunk(s) missing under "
                                f"{plan.work / 'chunks'} (first: {missing[0]}); run the "
                                "remaining `imgsim reindex --shard i/N` workers first")
    return np.concatenate([np.load(plan.chunk_path(j)) for j in chunks]) if len(chunks) else \
        np.zeros((0, 0), np.float32)


def _embedder(cfg: ReindexConfig) -> Embedder:
    return Embedder.from_checkpoint(cfg.checkpoint)


# -- distributed IVF: train once, add per shard ----------------------------------------------
def choose_factory(cfg: ReindexConfig, n: int, dim: int) -> str:
    """The factory a distributed run builds: the requested one, or for ``auto`` the rule's
    first IVF candidate (shards cannot time candidates they only hold a part of)."""
    if cfg.factory != AUTO:
        parse_factory(cfg.factory, dim)
        return cfg.factory
    return next((f for f in auto_candidates(n, dim, cfg.indexing()) if f.startswith("IVF")),
                "Flat")


def prepare(cfg: ReindexConfig) -> str:
    """For sharded IVF builds: embed evenly spaced chunks (reused later, not recomputed),
    train the IVF on them and write ``trained.faiss``. Returns the factory chosen."""
    embedder = _embedder(cfg)
    plan = make_plan(cfg, checkpoint_sha256=embedder.checkpoint_sha256)
    factory = choose_factory(cfg, len(plan.ids), embedder.dim)
    kind = parse_factory(factory, embedder.dim)
    if not kind.trained or (plan.work / TRAINED_FILE).is_file():
        return factory
    want = max(cfg.indexing().train_points_per_list * kind.nlist, 10_000)  # as make_index
    n_chunks = min(plan.num_chunks, math.ceil(want / plan.chunk_size))
    sample = sorted({round(i * plan.num_chunks / n_chunks) for i in range(n_chunks)})
    embed_chunks(plan, embedder, sample, cfg=cfg, desc="reindex (training sample)")
    vectors = load_vectors(plan, sample)
    vectors = vectors[~np.isnan(vectors).any(axis=1)]  # images without a face: no vector
    trained = new_index(factory, embedder.dim)
    ivf = faiss.extract_index_ivf(trained)
    trained.train(vectors[:want])
    if ivf.direct_map.type != faiss.DirectMap.NoMap:  # shards are merged without it
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)
    atomic_write(plan.work / TRAINED_FILE,
            lambda f: f.write(faiss.serialize_index(trained).tobytes()))
    (plan.work / "factory.txt").write_text(factory + "\n")
    log.info("trained %s on %d vectors from %d chunks", factory, min(len(vectors), want),
             len(sample))
    return factory


def run_shard(cfg: ReindexConfig, shard: int = 0, num_shards: int = 1) -> Plan:
    """Worker ``shard`` of ``num_shards``: embed its block of chunks; when a trained IVF exists
    (:func:`prepare`), also add them to a copy of it and write its shard index."""
    embedder = _embedder(cfg)
    plan = make_plan(cfg, checkpoint_sha256=embedder.checkpoint_sha256)
    chunks = shard_chunks(plan.num_chunks, shard, num_shards)
    embed_chunks(plan, embedder, chunks, cfg=cfg,
                 desc=f"reindex {shard}/{num_shards}" if num_shards > 1 else "reindex")
    trained = plan.work / TRAINED_FILE
    out = plan.shard_path(shard, num_shards)
    if trained.is_file() and not out.is_file():
        index = faiss.read_index(str(trained))
        for j in chunks:
            rows = plan.chunk_rows(j)
            index.add_with_ids(*drop_faceless(np.load(plan.chunk_path(j)), plan.ids[rows],
                                              what=f"shard index (chunk {j})"))
        atomic_write(out, lambda f: f.write(faiss.serialize_index(index).tobytes()))
    return plan


def _merge_shards(plan: Plan) -> tuple[faiss.Index, str, int] | None:
    """FAISS's merge of inverted lists over the shard indexes of one complete set, in order."""
    shard_dir = plan.work / "shards"
    if not (plan.work / TRAINED_FILE).is_file() or not shard_dir.is_dir():
        return None
    sets: dict[int, list[Path]] = {}
    for p in sorted(shard_dir.glob("shard-*-of-*.faiss")):
        sets.setdefault(int(p.stem.split("-of-")[1]), []).append(p)
    complete = [n for n, files in sets.items() if len(files) == n]
    if not complete:
        return None
    files = sets[max(complete)]
    merged = faiss.read_index(str(files[0]))
    for p in files[1:]:
        part = faiss.read_index(str(p))
        faiss.extract_index_ivf(merged).merge_from(faiss.extract_index_ivf(part), 0)
    return merged, (plan.work / "factory.txt").read_text().strip(), len(files)


# -- merge + publish --------------------------------------------------------------------------
def _caught_up(cfg: ReindexConfig, embedder: Embedder, plan: Plan, Session
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int], dict]:
    """The finished chunks' vectors with the catalogue's changes since the plan applied ->
    (vectors, ids, new vectors, new ids, ids gone, the catalogue now as {id: sha256})."""
    vectors, ids = load_vectors(plan), plan.ids  # NaN rows: no face (dropped below)
    with Session() as session:
        planned = dict(zip(plan.ids.tolist(), plan.sha256.tolist(), strict=True))
        gone, new, known = _catalogue_changes(session, planned, cfg.collection)
    if gone or new:
        log.info("catching up with the catalogue: %d removed, %d added or changed since the "
                 "plan", len(gone), len(new))
    new_vectors = _embed_rows(embedder, new, cfg)
    new_ids = np.array([r[0] for r in new], np.int64)
    keep = ~np.isin(ids, np.array(gone, np.int64))
    vectors, ids = drop_faceless(np.concatenate([vectors[keep], new_vectors]),
                                 np.concatenate([ids[keep], new_ids]))
    with_face = ~np.isnan(new_vectors).any(axis=1)  # counted in the line above
    return vectors, ids, new_vectors[with_face], new_ids[with_face], gone, known


def merge(cfg: ReindexConfig) -> Path:
    """Build the index from the finished chunks (or merge IVF shards), catch up with catalogue
    changes since the plan, tune, then, under the publish lock, catch up once more with what
    changed while building, publish and record; returns the version directory."""
    t0 = time.perf_counter()
    embedder = _embedder(cfg)
    plan = make_plan(cfg, checkpoint_sha256=embedder.checkpoint_sha256)
    Session = open_catalog(cfg.catalog_url)
    vectors, ids, new_vectors, new_ids, gone, known = _caught_up(cfg, embedder, plan, Session)
    icfg = cfg.indexing()
    merged = _merge_shards(plan)
    if merged is not None:
        index, factory, _ = merged
        change_vectors(index, remove=gone, ids=new_ids, vectors=new_vectors)
        kind = parse_factory(factory, embedder.dim)
        if uses_direct_map(kind, embedder.dim):
            faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
        base, q = split_for_tuning(len(ids), cfg.tuning_queries,
                                   np.random.default_rng(cfg.seed))
        index.remove_ids(ids[q])  # tuned on queries it does not hold, then they go back in
        held = held_out_queries(vectors[base], ids[base], vectors[q], k=icfg.k)
        tuned = tune_search_params(index, kind, held, target_recall=cfg.target_recall)
        index.add_with_ids(vectors[q], ids[q])
        built = BuiltIndex(index, factory, tuned.params, tuned.recall, tuned.met_target, 0.0)
        log.info("merged the inverted lists of %s shard indexes: %s", merged[2], factory)
    else:
        built = index_vectors(vectors, ids, icfg)
    del vectors
    # Building and tuning take minutes, and servers change the catalogue meanwhile (Upsert,
    # Delete, each publishing a version of its own). Under the publish lock nobody else
    # changes the catalogue or CURRENT: catch up with those changes, then publish.
    with publish_lock(cfg.index_root), Session.begin() as session:
        lock_collection(session, cfg.collection)
        gone, new, _ = _catalogue_changes(session, known, cfg.collection)
        tombstones = 0
        if gone or new:
            log.info("catching up before publishing: %d removed, %d added or changed while "
                     "building", len(gone), len(new))
            caught_up, caught_ids = drop_faceless(
                _embed_rows(embedder, new, cfg), np.array([r[0] for r in new], np.int64))
            _, tombstones = change_vectors(built.index, remove=gone, ids=caught_ids,
                                           vectors=caught_up)
        manifest = manifest_for(built, embedder, collection=cfg.collection,
                                requested=cfg.factory, cfg=icfg,
                                seconds=time.perf_counter() - t0)
        manifest = replace(manifest, tombstones=tombstones, build_params={
            **manifest.build_params, "reindex_images": len(plan.ids),
            "chunk_size": plan.chunk_size, "shards": merged[2] if merged else 1,
            "caught_up_at_publish": len(gone) + len(new)})
        model = model_row(session, embedder, cfg.checkpoint)
        path = publish_version(cfg.index_root, built.index, manifest, session=session,
                               model_id=model.id, keep=cfg.keep_versions).path
        fault_point(AFTER_INDEX_PUBLISH)  # crash tests: published, not yet recorded
    if not cfg.keep_work:
        shutil.rmtree(plan.work, ignore_errors=True)
    log.info("reindexed %s: %d images -> %s", cfg.collection, manifest.count, path)
    return path


def merge_into_store(cfg: ReindexConfig):
    """:func:`merge` into a vector store (``cfg.vector_store``, e.g. Milvus): the finished
    chunks, caught up with the catalogue, published as a new store version (a new Milvus
    collection filled, indexed, its recall@10 measured against exact search, then the alias
    moved) and recorded in the catalogue's ``index_versions``. Returns its
    :class:`~indexer.stores.StoreDescription`.

    The new version is staged (filled, indexed, tuned: minutes at 1M rows) without any lock,
    while servers go on writing the serving version. Then, under the index root's publish lock
    and the collection's lock (the ones servers' Upserts and Deletes take to write the store),
    what changed meanwhile is written into the staged version (images removed, added or
    replaced, and labels or metadata changed) and the alias is moved: writers wait only for
    that catch-up, and no write lands in the version the alias is leaving after it."""
    from indexer.publish import ModelIdentity
    from indexer.stores import Items, open_vector_store

    embedder = _embedder(cfg)
    plan = make_plan(cfg, checkpoint_sha256=embedder.checkpoint_sha256)
    Session = open_catalog(cfg.catalog_url)
    store = open_vector_store(cfg.vector_store)
    try:
        vectors, ids, _, _, _, known = _caught_up(cfg, embedder, plan, Session)
        order = np.argsort(ids, kind="stable")
        vectors, ids = vectors[order], ids[order]
        with Session() as session:
            seen = _attributes(session, cfg.collection)
        # (an image deleted since _caught_up is removed again at commit: it is in ``gone``)
        attrs = [seen.get(int(i), ("", {})) for i in ids]
        items = Items(ids, vectors, [a[0] for a in attrs], [a[1] for a in attrs],
                      [known.get(int(i), "") for i in ids])  # the images embedded
        staged = store.stage(cfg.collection, items)  # no lock: minutes at 1M rows
        try:
            with publish_lock(cfg.index_root), Session.begin() as session:
                lock_collection(session, cfg.collection)
                gone, new, _ = _catalogue_changes(session, known, cfg.collection)
                if gone or new:
                    log.info("catching up before publishing: %d removed, %d added or changed "
                             "while embedding and staging", len(gone), len(new))
                caught, caught_ids = drop_faceless(
                    _embed_rows(embedder, new, cfg), np.array([r[0] for r in new], np.int64))
                model_row(session, embedder, cfg.checkpoint)  # the version's model
                model = ModelIdentity.of_embedder(embedder)
                add = _catch_up_rows(_attributes(session, cfg.collection), items, seen, gone,
                                     caught_ids, caught, {r[0]: r[2] for r in new}, known)
                desc = store.commit(staged, add=add, remove=gone, model=model,
                                    session=session, keep=cfg.keep_versions)
                fault_point(AFTER_INDEX_PUBLISH)  # crash tests: published, not yet recorded
        except BaseException:
            if not _serving(store, staged):
                store.abandon(staged)
            raise
    finally:
        store.close()
    if not cfg.keep_work:
        shutil.rmtree(plan.work, ignore_errors=True)
    log.info("reindexed %s into %s: %d images -> %s", cfg.collection, cfg.vector_store,
             desc.count, desc.location)
    return desc


def _serving(store, staged) -> bool:
    try:
        return store.serving(staged.collection) == staged.name
    except LookupError:
        return False


def _attributes(session, collection: str) -> dict[int, tuple[str, dict]]:
    """{id: (label, metadata)} of every catalogued image of ``collection``."""
    return {i: (label, dict(meta or {})) for i, label, meta in session.execute(
        select(ImageRow.id, ImageRow.label, ImageRow.meta).where(
            ImageRow.collection == collection))}


def _catch_up_rows(now: dict[int, tuple[str, dict]], items, seen: dict[int, tuple[str, dict]],
                   gone: list[int], caught_ids: np.ndarray, caught: np.ndarray,
                   new_sha: dict[int, str], known: dict[int, str]):
    """The rows a staged version must get at commit: the images added or replaced since it
    was staged (new vectors, their ``new_sha``), and those whose label or metadata changed
    (their staged vectors, of the images in ``known``)."""
    from indexer.stores import Items

    skip = set(gone) | set(caught_ids.tolist())
    changed = np.array([i for i in items.ids.tolist()
                        if i not in skip and i in now and now[i] != seen.get(i)], np.int64)
    if len(changed):
        log.info("catching up before publishing: %d labels or metadata changed", len(changed))
    add_ids = np.concatenate([caught_ids, changed])
    vectors = np.concatenate([caught, items.vectors[np.searchsorted(items.ids, changed)]])
    return Items(add_ids, vectors.astype(np.float32, copy=False),
                 [now[int(i)][0] for i in add_ids], [now[int(i)][1] for i in add_ids],
                 [new_sha.get(int(i)) or known.get(int(i), "") for i in add_ids])


def _embed_rows(embedder: Embedder, rows: list[tuple], cfg: ReindexConfig) -> np.ndarray:
    """(n, d) float32 embeddings of catalogue rows (id, path, sha256, storage)."""
    if not rows:
        return np.zeros((0, embedder.dim), np.float32)
    return embed_unique(embedder, [image_file(r[1], r[3], cfg.index_root) for r in rows],
                        [r[2] for r in rows],
                        batch_size=cfg.batch_size, num_workers=0, skip_faceless=True)


def _catalogue_changes(session, known: dict[int, str], collection: str
                       ) -> tuple[list[int], list[tuple], dict[int, str]]:
    """Against ``known`` ({id: sha256} already embedded): (ids since deleted or changed,
    rows (id, path, sha256, storage) added or changed, each in id order; the catalogue now as
    {id: sha256}, what is known once the changes are applied)."""
    now = session.execute(select(ImageRow.id, ImageRow.path, ImageRow.sha256, ImageRow.storage)
                          .where(ImageRow.collection == collection)).all()
    current = {r[0]: tuple(r) for r in now}
    gone = sorted(i for i, sha in known.items() if i not in current or current[i][2] != sha)
    new = [r for i, r in sorted(current.items()) if known.get(i) != r[2]]
    return gone, new, {i: r[2] for i, r in current.items()}


def reindex(cfg: ReindexConfig):
    """The whole reindex in this process: plan, embed (resuming), build, publish; returns the
    version directory (FAISS) or the store's description of the new version."""
    run_shard(cfg, 0, 1)
    return merge(cfg) if cfg.vector_store == "faiss" else merge_into_store(cfg)


def status(cfg: ReindexConfig) -> dict:
    """How far a reindex has got (for `imgsim reindex --status`); starts nothing."""
    sha = file_sha256(cfg.checkpoint)
    work = work_dir(cfg, sha)
    if not (work / RUN_FILE).is_file():
        return {"work_dir": str(work), "state": "not started"}
    plan = _read_plan(cfg, work, sha)
    done = sum(plan.done(j) for j in range(plan.num_chunks))
    shards = sorted(p.name for p in (work / "shards").glob("*.faiss")) \
        if (work / "shards").is_dir() else []
    return {"work_dir": str(work), "state": "embedded" if done == plan.num_chunks else "embedding",
            "images": len(plan.ids), "chunks": plan.num_chunks, "chunks_done": done,
            "trained": (work / TRAINED_FILE).is_file(), "shard_indexes": shards}
