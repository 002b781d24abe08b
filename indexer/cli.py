"""Command-line entry points of the indexer: index build/list/migrate, and reindex."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from training.settings import DEFAULT_CATALOG, DEFAULT_INDEX_ROOT, common_settings  # noqa: F401  (re-exported)


def _common(p: argparse.ArgumentParser) -> None:
    common, _ = common_settings()  # IMGSIM_INDEX_ROOT, IMGSIM_CATALOG_URL, read at the edge
    p.add_argument("--index-root", default=common.index_root,
                   help="where versions live (env IMGSIM_INDEX_ROOT; default %(default)s)")
    p.add_argument("--catalog", default=common.catalog_url,
                   help="SQLAlchemy URL, sqlite:///... or postgresql+psycopg://... "
                        "(env IMGSIM_CATALOG_URL; default %(default)s)")


def _indexing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", default="default")
    p.add_argument("--factory", default="auto",
                   help="auto (choose by size and memory budget, measured), or a FAISS factory "
                        "string: Flat, HNSW32, IVF1024,Flat, IVF4096,PQ16, IVF1024,SQ8, ...")
    p.add_argument("--memory-budget-mb", type=float, default=2048.0,
                   help="memory the index may use; auto picks compressed codes to fit it")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="recall@10 (vs exact search, on held-out queries) that nprobe/efSearch "
                        "are tuned to; the measured value goes in the manifest")
    p.add_argument("--tuning-queries", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2,
                   help="DataLoader processes decoding images while the model runs")
    p.add_argument("--keep-versions", type=int, default=5, help="published versions to keep")
    p.add_argument("--seed", type=int, default=0)


def register(sub: argparse._SubParsersAction) -> None:
    idx = sub.add_parser("index", help="build and inspect FAISS index versions",
                         description="Build and inspect FAISS index versions, and migrate the "
                                     "catalogue database.")
    isub = idx.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    b = isub.add_parser("build", help="embed an image folder and publish an index version",
                        description="Catalogue every image of <images>/<label>/<file>, embed it "
                                    "with the checkpoint (identical content once), build the "
                                    "index (auto: chosen and tuned to the target recall), and "
                                    "publish a new version atomically under --index-root.")
    b.add_argument("--checkpoint", required=True)
    b.add_argument("--images", required=True, help="image folder, one sub-folder per label")
    _common(b)
    _indexing(b)
    b.set_defaults(func=_build)

    ls = isub.add_parser("list", help="list published index versions",
                         description="One line per version under --index-root (newest last): "
                                     "factory, count, search parameters, measured recall@10; "
                                     "the current one is marked with '*'.")
    ls.add_argument("--index-root", default=common_settings()[0].index_root)
    ls.set_defaults(func=_list)

    rb = isub.add_parser("rebuild", help="rebuild the current version from its stored vectors",
                         description="Rebuild the current index version from the vectors it "
                                     "stores (Flat, HNSW, IVF-Flat; no re-embedding): re-choose "
                                     "(auto) or re-train, re-tune, drop tombstones, publish. Use "
                                     "after many incremental changes (drift); compressed indexes "
                                     "(PQ/SQ) need `imgsim reindex` instead.")
    rb.add_argument("--index-root", default=common_settings()[0].index_root)
    rb.add_argument("--factory", default="auto")
    rb.add_argument("--memory-budget-mb", type=float, default=2048.0)
    rb.add_argument("--target-recall", type=float, default=0.95)
    rb.add_argument("--keep-versions", type=int, default=5)
    rb.add_argument("--if-drifted", action="store_true",
                    help="only rebuild when the drift since the last full build warrants it")
    rb.add_argument("--catalog", default=None,
                    help="record the new version in this catalogue's index_versions (the one "
                         "the collection was built with); default: not recorded")
    rb.set_defaults(func=_rebuild)

    m = isub.add_parser("migrate", help="migrate the catalogue schema (Alembic)",
                        description="Bring the catalogue database to the latest schema revision "
                                    "(or --revision). Opening a catalogue does this too; run it "
                                    "explicitly before rolling out a new release.")
    m.add_argument("--catalog", default=common_settings()[0].catalog_url)
    m.add_argument("--revision", default="head")
    m.set_defaults(func=_migrate)

    r = sub.add_parser(
        "reindex", help="re-embed a collection with a new checkpoint into a new index version",
        description="Re-embed every catalogued image of a collection with --checkpoint and "
                    "publish a new index version. Resumable: embeddings are written in chunks "
                    "under --work-dir; after a crash or kill, the same command skips finished "
                    "chunks. Past one machine: run `--prepare` once (plans; for IVF trains on "
                    "a sample), then N workers `--shard i/N` (any scheduler, shared work dir), "
                    "then `--merge` once (FAISS merges the IVF inverted lists). See "
                    "indexer/README.md.")
    r.add_argument("--checkpoint", required=True)
    _common(r)
    _indexing(r)
    r.add_argument("--work-dir", default=None,
                   help="shared directory for the plan and embedding chunks "
                        "(default <index-root>/reindex/<collection>-<checkpoint sha>)")
    r.add_argument("--chunk-size", type=int, default=2048,
                   help="images per chunk, the unit of resumption and sharding")
    r.add_argument("--keep-work", action="store_true",
                   help="keep the work directory (embeddings) after publishing")
    r.add_argument("--pixel-cache", default=None, metavar="DIR",
                   help="keep each image's preprocessed pixels here (C x size x size bytes "
                        "per distinct image) and reuse them: the next reindex with a model "
                        "of the same preprocessing decodes nothing")
    # (indexer.stores.cli's add_store_argument, spelled here: that module imports this one)
    r.add_argument("--vector-store", default=os.environ.get("IMGSIM_VECTOR_STORE", "faiss"),
                   metavar="SPEC",
                   help="where the new version goes: faiss (an index version under "
                        "--index-root; default), milvus:FILE (Milvus Lite) or "
                        "milvus:http://host:19530: a new Milvus collection, then the alias "
                        "moved (env IMGSIM_VECTOR_STORE)")
    stage = r.add_mutually_exclusive_group()
    stage.add_argument("--shard", default=None, metavar="I/N",
                       help="only embed (and, after --prepare, add) worker I's part of N")
    stage.add_argument("--prepare", action="store_true",
                       help="only write the plan and, for IVF, train on a sample of chunks")
    stage.add_argument("--merge", action="store_true",
                       help="only assemble the index from all workers' output and publish")
    stage.add_argument("--status", action="store_true", help="print progress as JSON")
    r.set_defaults(func=_reindex)


def _build(args: argparse.Namespace) -> int:
    from indexer.build import BuildConfig, build_index

    _ensure_sqlite_dir(args.catalog)
    path = build_index(BuildConfig(checkpoint=args.checkpoint, images=args.images,
                                   index_root=args.index_root, catalog_url=args.catalog,
                                   collection=args.collection, factory=args.factory,
                                   batch_size=args.batch_size, num_workers=args.num_workers,
                                   keep_versions=args.keep_versions,
                                   memory_budget_mb=args.memory_budget_mb,
                                   target_recall=args.target_recall,
                                   tuning_queries=args.tuning_queries, seed=args.seed))
    print(f"published {path}")
    _print_manifest(path)
    return 0


def _print_manifest(path: Path) -> None:
    m = json.loads((Path(path) / "manifest.json").read_text())
    print(f"  {m['factory']} {m['search_params'] or ''} count={m['count']} "
          f"recall@10={m['recall_at_10']} build={m['build_seconds']:.1f}s")


def _list(args: argparse.Namespace) -> int:
    from indexer.versions import current_version_name

    root = Path(args.index_root) / "versions"
    if not root.is_dir():
        raise FileNotFoundError(f"no index versions under {args.index_root}")
    try:
        current = current_version_name(args.index_root)
    except FileNotFoundError:
        current = ""
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        m = json.loads((d / "manifest.json").read_text())
        print(f"{'*' if d.name == current else ' '} {d.name} {m['collection']} {m['factory']} "
              f"{json.dumps(m.get('search_params') or {})} count={m['count']} "
              f"recall@10={m.get('recall_at_10')} model={m['model_version']}")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from indexer.construct import IndexingConfig
    from indexer.incremental import drift, needs_rebuild
    from indexer.rebuild import IndexChanged, rebuild_version
    from indexer.versions import load_index_version

    version = load_index_version(args.index_root)
    if args.if_drifted and not needs_rebuild(version.manifest):
        print(f"{version.manifest.version}: drift {drift(version.manifest):.1%}, "
              f"{version.manifest.tombstones} tombstones: no rebuild needed")
        return 0
    try:
        sessions = None
        if args.catalog:
            from indexer.catalog import open_catalog

            sessions = open_catalog(args.catalog)
        path = rebuild_version(args.index_root, version, keep=args.keep_versions,
                               sessions=sessions,
                               cfg=IndexingConfig(factory=args.factory,
                                                  memory_budget_mb=args.memory_budget_mb,
                                                  target_recall=args.target_recall))
    except IndexChanged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"published {path}")
    _print_manifest(path)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from imgsim.db.migrate import upgrade_catalog
    from indexer.catalog import make_engine

    _ensure_sqlite_dir(args.catalog)
    print(f"catalogue at revision {upgrade_catalog(make_engine(args.catalog), args.revision)}")
    return 0


def _reindex(args: argparse.Namespace) -> int:
    from indexer import reindex as rx

    _ensure_sqlite_dir(args.catalog)
    if args.chunk_size < 1:
        raise ValueError("--chunk-size must be positive")
    cfg = rx.ReindexConfig(checkpoint=args.checkpoint, catalog_url=args.catalog,
                           index_root=args.index_root, collection=args.collection,
                           work_dir=args.work_dir, factory=args.factory,
                           chunk_size=args.chunk_size, batch_size=args.batch_size,
                           num_workers=args.num_workers, memory_budget_mb=args.memory_budget_mb,
                           target_recall=args.target_recall, tuning_queries=args.tuning_queries,
                           seed=args.seed, keep_versions=args.keep_versions,
                           keep_work=args.keep_work, pixel_cache=args.pixel_cache,
                           vector_store=args.vector_store)
    from indexer.stores import parse_store_spec

    into_store = parse_store_spec(args.vector_store)[0] != "faiss"
    if args.status:
        print(json.dumps(rx.status(cfg), indent=2))
    elif args.prepare:
        print(f"prepared: factory {rx.prepare(cfg)}")
    elif args.shard:
        i, n = rx.parse_shard(args.shard)
        plan = rx.run_shard(cfg, i, n)
        print(f"shard {i}/{n} done: chunks {list(rx.shard_chunks(plan.num_chunks, i, n))} "
              f"under {plan.work}")
    elif into_store:
        d = rx.merge_into_store(cfg) if args.merge else rx.reindex(cfg)
        print(f"published {d.location}: {d.backend}:{d.index_type} {d.search_params} "
              f"count={d.count} recall@10={d.recall_at_10}")
    else:
        path = rx.merge(cfg) if args.merge else rx.reindex(cfg)
        print(f"published {path}")
        _print_manifest(path)
    return 0


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        parent = os.path.dirname(url.removeprefix("sqlite:///"))
        if parent:
            os.makedirs(parent, exist_ok=True)
