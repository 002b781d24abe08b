"""Command-line entry points of the indexer: index build."""

from __future__ import annotations

import argparse
import os

DEFAULT_CATALOG = os.environ.get("IMGSIM_CATALOG_URL", "sqlite:///var/catalog.db")
DEFAULT_INDEX_ROOT = os.environ.get("IMGSIM_INDEX_ROOT", "var/index")


def register(sub: argparse._SubParsersAction) -> None:
    idx = sub.add_parser("index", help="build and inspect FAISS index versions",
                         description="Build and inspect FAISS index versions.")
    isub = idx.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    b = isub.add_parser("build", help="embed an image folder and publish an index version",
                        description="Catalogue every image of <images>/<label>/<file>, embed it "
                                    "with the checkpoint and publish a new index version "
                                    "(atomically) under --index-root.")
    b.add_argument("--checkpoint", required=True)
    b.add_argument("--images", required=True, help="image folder, one sub-folder per label")
    b.add_argument("--index-root", default=DEFAULT_INDEX_ROOT,
                   help="where versions live (env IMGSIM_INDEX_ROOT; default %(default)s)")
    b.add_argument("--catalog", default=DEFAULT_CATALOG,
                   help="SQLAlchemy URL (env IMGSIM_CATALOG_URL; default %(default)s)")
    b.add_argument("--collection", default="default")
    b.add_argument("--factory", default="Flat", help="FAISS factory string")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--num-workers", type=int, default=2)
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from indexer.build import BuildConfig, build_index

    _ensure_sqlite_dir(args.catalog)
    path = build_index(BuildConfig(checkpoint=args.checkpoint, images=args.images,
                                   index_root=args.index_root, catalog_url=args.catalog,
                                   collection=args.collection, factory=args.factory,
                                   batch_size=args.batch_size, num_workers=args.num_workers))
    print(f"published {path}")
    return 0


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        parent = os.path.dirname(url.removeprefix("sqlite:///"))
        if parent:
            os.makedirs(parent, exist_ok=True)
