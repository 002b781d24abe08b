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
                                    "not catalogued (extra), stored with another label or "
                                    "metadata (stale), and stored as the vector of another "
                                    "image than the catalogue's (replaced: the content sha256 "
                                    "differs). --repair deletes extras, rewrites stale rows, "
                                    "and with --checkpoint embeds and stores missing and "
                                    "replaced ones. Exit status 1 while drift remains.")
    add_store_argument(c)
    c.add_argument("--catalog", default=DEFAULT_CATALOG)
    c.add_argument("--index-root", default=DEFAULT_INDEX_ROOT)
    c.add_argument("--collection", action="append", default=None,
                   help="collection to check (repeatable; default every collection)")
    c.add_argument("--repair", action="store_true")
    c.add_argument("--checkpoint", default=None,
                   help="with --repair: embed missing rows with this checkpoint")
    c.set_defaults(func=_check)

    pub = ssub.add_parser("publish", help="publish a FAISS index version's vectors into a store",
                          description="Copy the vectors of the current FAISS version under "
                                      "--index-root (Flat, HNSW, IVF-Flat store them) with the "
                                      "catalogue's labels and metadata into --vector-store as a "
                                      "new version (Milvus: a new collection, recall@10 "
                                      "measured, then the alias moved), recorded in the "
                                      "catalogue. The way from the embedded index to Milvus "
                                      "without re-embedding.")
    add_store_argument(pub)
    pub.add_argument("--catalog", default=DEFAULT_CATALOG)
    pub.add_argument("--index-root", default=DEFAULT_INDEX_ROOT)
    pub.add_argument("--keep-versions", type=int, default=2)
    pub.set_defaults(func=_publish)


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


def _publish(args: argparse.Namespace) -> int:
    import numpy as np

    from indexer.catalog import DEFAULT_COLLECTION, all_images, open_catalog
    from indexer.factory import stored_ids
    from indexer.publish import ModelIdentity
    from indexer.search import reconstruct
    from indexer.stores import Items, open_vector_store
    from indexer.versions import load_index_version

    if args.vector_store.partition(":")[0] == "faiss":
        raise ValueError("store publish copies a FAISS version into another store: give "
                         "--vector-store milvus:FILE_OR_URI")
    version = load_index_version(args.index_root)
    m = version.manifest
    collection = m.collection or DEFAULT_COLLECTION
    ids = np.sort(stored_ids(version.index))
    vectors, present = reconstruct(version.index, ids)
    if not present.all():
        raise ValueError(f"{m.factory} does not store exact vectors ({int((~present).sum())} "
                         f"of {len(ids)} missing): re-embed with imgsim reindex instead")
    sessions = open_catalog(args.catalog)
    store = open_vector_store(args.vector_store)
    try:
        with sessions.begin() as s:
            rows = {r.id: r for r in all_images(s, collection=collection)}
            keep = np.array([int(i) in rows for i in ids], bool)  # catalogue: the truth
            ids, vectors = ids[keep], vectors[keep]
            desc = store.publish(collection, Items(ids, vectors,
                                                   [rows[int(i)].label for i in ids],
                                                   [rows[int(i)].meta or {} for i in ids],
                                                   [rows[int(i)].sha256 for i in ids]),
                                 model=ModelIdentity.of_manifest(m), session=s,
                                 keep=args.keep_versions)
    finally:
        store.close()
    print(f"published {desc.location}: {desc.index_type} {desc.search_params} "
          f"count={desc.count} recall@10={desc.recall_at_10} (from FAISS {m.version})")
    return 0
