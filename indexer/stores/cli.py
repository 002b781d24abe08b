"""`imgsim store check [--repair]`: drift between the catalogue and a vector store."""

from __future__ import annotations

import argparse
import os

DEFAULT_STORE = os.environ.get("IMGSIM_VECTOR_STORE", "faiss")


def add_store_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vector-store", default=DEFAULT_STORE, metavar="SPEC",
                   help="faiss (index versions under --index-root), milvus:FILE (Milvus Lite) "
                        "or milvus:http://host:19530 (env IMGSIM_VECTOR_STORE; default "
                        "%(default)s)")


def register(sub: argparse._SubParsersAction) -> None:
    from indexer.cli import DEFAULT_CATALOG, DEFAULT_INDEX_ROOT

    st = sub.add_parser("store", help="check a vector store against the catalogue",
                        description="The catalogue is the source of truth for keys, labels and "
                                    "metadata; these commands compare a vector store with it.")
    ssub = st.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    c = ssub.add_parser("check", help="report (and --repair) drift between catalogue and store",
                        description="Report ids catalogued but not stored (missing), stored but "
                                    "not catalogued (extra) and stored with another label or "
                                    "metadata (stale). --repair deletes extras, rewrites stale "
                                    "rows, and with --checkpoint embeds and stores missing ones. "
                                    "Exit status 1 while drift remains.")
    add_store_argument(c)
    c.add_argument("--catalog", default=DEFAULT_CATALOG)
    c.add_argument("--index-root", default=DEFAULT_INDEX_ROOT)
    c.add_argument("--collection", action="append", default=None,
                   help="collection to check (repeatable; default every collection)")
    c.add_argument("--repair", action="store_true")
    c.add_argument("--checkpoint", default=None,
                   help="with --repair: embed missing rows with this checkpoint")
    c.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from indexer.catalog import collections, image_file, open_catalog
    from indexer.stores import open_vector_store
    from indexer.stores.check import check_store, repair_store

    sessions = open_catalog(args.catalog)
    store = open_vector_store(args.vector_store, index_root=args.index_root)
    embed = None
    if args.checkpoint:
        from indexer.embedding import embed_files
        from training.models.embedder import Embedder

        embedder = Embedder.from_checkpoint(args.checkpoint)

        def embed(rows):
            return embed_files(embedder, [image_file(r.path, r.storage, args.index_root)
                                          for r in rows])
    drifted = 0
    try:
        with sessions.begin() as s:
            names = args.collection or [c.name for c in collections(s)]
            for name in names:
                try:
                    drift = check_store(s, store, name)
                except (LookupError, FileNotFoundError) as e:  # nothing published there yet
                    print(f"{name}: {e}")
                    continue
                print(drift.summary())
                if args.repair and not drift.clean:
                    drift = repair_store(s, store, drift, embed=embed)
                    print(f"  repaired; left: {drift.summary()}")
                drifted += not drift.clean
    finally:
        store.close()
    return 1 if drifted else 0
