"""Command-line entry points of the service: serve, demo, the API clients, and API keys."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from indexer.cli import DEFAULT_CATALOG, DEFAULT_INDEX_ROOT
from service.limits import MAX_K
from training.settings import DEFAULT_SERVER, client_settings

log = logging.getLogger(__name__)


def _client_options(p: argparse.ArgumentParser) -> None:
    client, _ = client_settings()  # IMGSIM_SERVER, IMGSIM_API_KEY, IMGSIM_TLS_CA (training.settings)
    p.add_argument("--server", default=client.server,
                   help=f"HOST:PORT (env IMGSIM_SERVER; default {DEFAULT_SERVER})")
    p.add_argument("--api-key", default=client.api_key or None,
                   help="API key (env IMGSIM_API_KEY) when the server requires one")
    p.add_argument("--tls-ca", default=client.tls_ca or None,
                   help="PEM file of the CA that signed the server's certificate: use TLS "
                        "(env IMGSIM_TLS_CA)")
    from service.health_check import positive_seconds

    p.add_argument("--timeout", type=positive_seconds, default=30.0,
                   help="seconds (default %(default)s)")


def int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in lo..hi (hi None: no upper bound), else a usage error
    that states the bounds."""
    bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


# What a catalogue key is, for --help texts (indexer.build.image_key and _upsert_images).
KEY_HELP = ("a catalogue key: <label>/<name> for images indexed or upserted from a folder "
            "(their path below the folder without the extension, e.g. 3/0123 for 3/0123.png), "
            "<name> (the file name without its extension) for single upserted files")
IMAGE_HELP = "an image file, or " + KEY_HELP


def _meta(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise ValueError(f"metadata must be NAME=VALUE, got {p!r}")
        out[name] = value
    return out


def register(sub: argparse._SubParsersAction) -> None:
    from service.face import FACE_MODES  # numpy and PIL, not torch

    s = sub.add_parser("serve", help="run the gRPC server",
                       description="Serve the imgsim.v1 API over gRPC from a checkpoint, the "
                                   "current index version(s) and the catalogue. Settings come "
                                   "from defaults, then --config FILE (TOML), then "
                                   "IMGSIM_SERVE_<NAME> environment variables, then flags. "
                                   "SIGTERM drains in-flight calls and exits 0.")
    s.add_argument("--config", default=os.environ.get("IMGSIM_SERVE_CONFIG"),
                   help="TOML file of ServeConfig settings (top level or a [serve] table)")
    s.add_argument("--checkpoint")
    s.add_argument("--index-root", help=f"default {DEFAULT_INDEX_ROOT}")
    s.add_argument("--extra-index-root", action="append", dest="extra_index_roots",
                   help="serve another collection from this index root (repeatable)")
    s.add_argument("--catalog", dest="catalog_url", help=f"default {DEFAULT_CATALOG}")
    s.add_argument("--vector-store", metavar="SPEC",
                   help="faiss (default: the index versions under --index-root, in this "
                        "process), milvus:FILE (Milvus Lite) or milvus:http://host:19530 (a "
                        "Milvus server that stateless replicas share); env IMGSIM_VECTOR_STORE")
    s.add_argument("--collection", action="append", dest="collections",
                   help="with a vector store other than faiss: a catalogue collection to "
                        "serve (repeatable, the first is the default; default: every "
                        "collection the store has published)")
    s.add_argument("--host", help="bind address (0.0.0.0 for all; default 127.0.0.1)")
    s.add_argument("--port", type=int_in(0, 65535), help="default 50051 (0: any free port)")
    s.add_argument("--max-workers", type=int, help="gRPC handler threads")
    s.add_argument("--max-batch", type=int, help="images per forward pass (dynamic batching)")
    s.add_argument("--max-wait-ms", type=float, help="longest wait for a fuller batch")
    s.add_argument("--face", choices=FACE_MODES,
                   help="check the checkpoint's face step: refused unless its spec has one with "
                        "this on-miss (imgsim checkpoint set-face); default off: as the spec says")
    s.add_argument("--watch-seconds", type=float,
                   help="poll the CURRENT pointer this often and hot-swap (0: off)")
    s.add_argument("--require-api-key", action="store_const", const=True,
                   help="refuse calls without a valid API key (see `imgsim keys`)")
    s.add_argument("--tls-cert", help="PEM certificate chain: serve TLS only")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert")
    s.add_argument("--metrics-port", type=int_in(0, 65535),
                   help="serve Prometheus /metrics on this HTTP port (0: any free port)")
    s.add_argument("--log-format", choices=["text", "json"], help="json: one object per line")
    s.add_argument("--http-port", type=int_in(0, 65535),
                   help="the HTTP/JSON API and web console on this port (default 8080; 0: off)")
    s.set_defaults(func=_serve)

    d = sub.add_parser("demo", help="train a demo model on real offline images, index, serve",
                       description="Prepare (once) a demo model and index under --root from "
                                   "scikit-learn's real handwritten digits, or from the image "
                                   "folder in $IMGSIM_DEMO_DATA / --data, then serve it.")
    d.add_argument("--root", default="var/demo")
    d.add_argument("--data", default=os.environ.get("IMGSIM_DEMO_DATA") or None,
                   help="image folder <label>/<image> (default: sklearn digits)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int_in(0, 65535), default=50051)
    d.add_argument("--http-port", type=int_in(0, 65535), default=8080,
                   help="HTTP API and web console (default %(default)s; 0: off)")
    d.add_argument("--prepare-only", action="store_true", help="build model and index, don't serve")
    d.set_defaults(func=_demo)

    v = sub.add_parser("verify", help="ask a server whether two images match",
                       description="Verify two images (file paths, or catalogue keys) on a "
                                   "server, or one image against an enrolled identity "
                                   "(--identity LABEL: every catalogued image of that label).")
    v.add_argument("a", help=IMAGE_HELP)
    v.add_argument("b", nargs="?", help="second image, file or key (omit with --identity)")
    v.add_argument("--identity", default="", help="verify A against this enrolled label")
    v.add_argument("--collection", default="", help="collection of the identity")
    v.add_argument("--threshold", type=float, default=None)
    _client_options(v)
    v.add_argument("--json", action="store_true", help="print the reply as JSON (scripts)")
    v.set_defaults(func=_verify)

    q = sub.add_parser("search", help="top-k most similar catalogued images",
                       description="Search a server's index with an image file (or a catalogue "
                                   "key), optionally filtered by label, metadata and distance. "
                                   "In the API, SearchRequest.k = 0 (unset) means the server's "
                                   "default, 10; here -k is always given (default 5).")
    q.add_argument("query", help=IMAGE_HELP)
    q.add_argument("-k", type=int_in(1, MAX_K), default=5,
                   help=f"number of hits, 1..{MAX_K} (default %(default)s; a server started "
                        f"with a lower max_k refuses more)")
    q.add_argument("--collection", default="")
    q.add_argument("--label", action="append", dest="labels", help="only this label (repeatable)")
    q.add_argument("--meta", action="append", help="only images with NAME=VALUE (repeatable)")
    q.add_argument("--max-distance", type=float, default=None)
    q.add_argument("--exclude", action="append", help="never this key (repeatable)")
    _client_options(q)
    q.add_argument("--json", action="store_true", help="print the reply as JSON (scripts)")
    q.set_defaults(func=_search)

    u = sub.add_parser("upsert", help="add or replace images on a server (idempotent by key)",
                       description="Stream images to a server's Upsert and print the key each "
                                   "got. A folder is read as <folder>/<label>/<image>: the key "
                                   "is <label>/<file name without extension> and the label the "
                                   "sub-folder's name (like `imgsim index build`); a single "
                                   "file's key is its file name without extension (photos/"
                                   "cat.jpg -> cat), with --label. An existing key is replaced. "
                                   "All are applied or none.")
    u.add_argument("paths", nargs="+", help="image files or folders")
    u.add_argument("--label", default="", help="label of single files")
    u.add_argument("--meta", action="append", help="NAME=VALUE metadata for every image")
    u.add_argument("--collection", default="")
    _client_options(u)
    u.add_argument("--json", action="store_true", help="print the reply as JSON (scripts)")
    u.set_defaults(func=_upsert)

    x = sub.add_parser("delete", help="remove images by key from a server's catalogue and index",
                       description="Delete images by key: " + KEY_HELP + " (what `imgsim "
                                   "upsert` prints). Unknown keys fail the call (nothing "
                                   "deleted) unless --ignore-missing.")
    x.add_argument("keys", nargs="+", metavar="KEY", help="catalogue key, e.g. 3/0123")
    x.add_argument("--collection", default="")
    x.add_argument("--ignore-missing", action="store_true")
    _client_options(x)
    x.set_defaults(func=_delete)

    i = sub.add_parser("describe", help="what a server serves: model, index version, size",
                       description="Print DescribeIndex: model version, index version, factory, "
                                   "count, measured recall, threshold, face pipeline.")
    i.add_argument("--collection", default="")
    _client_options(i)
    i.add_argument("--json", action="store_true", help="print the reply as JSON (scripts)")
    i.set_defaults(func=_describe)

    r = sub.add_parser("reload", help="make a server swap to another index version now",
                       description="Hot-swap a collection to a published index version (default: "
                                   "the one CURRENT points at); in-flight calls are not dropped, "
                                   "and a version built with another model is refused.")
    r.add_argument("--collection", default="")
    r.add_argument("--version", default="")
    _client_options(r)
    r.set_defaults(func=_reload)

    from service import health_check

    h = sub.add_parser("health", help="exit 0 only when a server reports SERVING",
                       description=health_check.DESCRIPTION)
    health_check.add_arguments(h)
    h.set_defaults(func=_health)

    b = sub.add_parser("blobs", help="maintain the store of images uploaded by Upsert",
                       description="The server keeps images sent to Upsert as content-addressed "
                                   "blobs and removes one when no catalogue row references it "
                                   "any more. `gc` removes what a crash left behind.")
    bsub = b.add_subparsers(dest="blobs_command", required=True, metavar="COMMAND")
    bg = bsub.add_parser("gc", help="remove orphan blobs (referenced by no catalogue row)",
                         description="Remove the blobs of every served collection that no "
                                     "catalogue row references, and temporary files of "
                                     "interrupted writes, older than --min-age-seconds. Safe "
                                     "beside running servers: it holds the index root's "
                                     "publish lock, as every Upsert does while it stores a blob "
                                     "and commits the row referencing it. Reads the server's "
                                     "settings (--config, IMGSIM_SERVE_*) for the index roots, "
                                     "the catalogue and blob_dir.")
    health_check.add_config_argument(bg)
    bg.add_argument("--index-root", action="append", dest="index_roots",
                    help="a collection's index root (repeatable; default: the server's "
                         f"index_root and extra_index_roots, else {DEFAULT_INDEX_ROOT})")
    bg.add_argument("--catalog", dest="catalog_url",
                    help=f"the server's catalogue URL (default: its settings, else "
                         f"{DEFAULT_CATALOG})")
    bg.add_argument("--blob-dir", help="the server's blob_dir (default: <index root>/blobs)")
    bg.add_argument("--min-age-seconds", type=float, default=None,
                    help="keep files younger than this (default 300)")
    bg.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    bg.set_defaults(func=_blobs_gc)

    k = sub.add_parser("keys", help="manage API keys (stored hashed in the catalogue)",
                       description="Create, list and revoke API keys in the server's catalogue "
                                   "(read from the server's settings: --config, "
                                   "IMGSIM_SERVE_CATALOG_URL, or --catalog). A key is scoped to "
                                   "collections and to read or write (write includes read).")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    kc = ksub.add_parser("create", help="create a key and print it once",
                         description="Create an API key; the key is printed once and only its "
                                     "hash is stored.")
    kc.add_argument("--name", required=True, help="who or what uses it")
    kc.add_argument("--access", choices=["read", "write"], default="read")
    kc.add_argument("--collections", default="*",
                    help="comma-separated collections, or * for all (default)")
    _catalog_of_server(kc)
    kc.set_defaults(func=_keys_create)
    kl = ksub.add_parser("list", help="list keys (ids, scopes; never secrets)",
                         description="List API keys: id, name, access, collections, created, "
                                     "revoked.")
    _catalog_of_server(kl)
    kl.set_defaults(func=_keys_list)
    kr = ksub.add_parser("revoke", help="revoke a key by id",
                         description="Revoke an API key by its id (the part after isk_); "
                                     "running servers refuse it within their auth cache time.")
    kr.add_argument("key_id")
    _catalog_of_server(kr)
    kr.set_defaults(func=_keys_revoke)


def _catalog_of_server(p: argparse.ArgumentParser) -> None:
    """--config and --catalog: commands beside a server use the server's catalogue."""
    from service.health_check import add_config_argument

    add_config_argument(p)
    p.add_argument("--catalog", dest="catalog_url", default=None,
                   help=f"catalogue URL (default: the server's, from --config or "
                        f"IMGSIM_SERVE_CATALOG_URL, else {DEFAULT_CATALOG})")


def _serve_until_stopped(cfg) -> int:
    """serve_forever; a server that could not load its model, index or catalogue exits 2
    (a bad file or setting) or 1 (anything else) with one line."""
    from service.server import StartupError, serve_forever

    try:
        serve_forever(cfg)
    except StartupError as e:
        print(f"imgsim serve: error: {e}", file=sys.stderr)
        return 2 if isinstance(e.__cause__, OSError | ValueError) else 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    from service.config import DEFAULT_HTTP_PORT, load_serve_config
    from service.logs import use_json_logs
    from service.writable import require_serving_writable

    flags = {k: getattr(args, k) for k in (
        "checkpoint", "index_root", "catalog_url", "host", "port", "max_workers", "max_batch",
        "max_wait_ms", "face", "watch_seconds", "require_api_key", "tls_cert", "tls_key",
        "metrics_port", "log_format", "http_port", "vector_store")}
    if args.extra_index_roots:
        flags["extra_index_roots"] = tuple(args.extra_index_roots)
    if args.collections:
        flags["collections"] = tuple(args.collections)
    cfg = load_serve_config(args.config, defaults={"index_root": DEFAULT_INDEX_ROOT,
                                                   "catalog_url": DEFAULT_CATALOG,
                                                   "http_port": DEFAULT_HTTP_PORT}, **flags)
    if cfg.log_format == "json":
        use_json_logs()
    require_serving_writable(cfg)  # a root-owned var/: the folder and the fix, not a traceback
    return _serve_until_stopped(cfg)


def _demo(args: argparse.Namespace) -> int:
    from service.config import ServeConfig
    from service.demo import prepare_demo

    demo = prepare_demo(args.root, data=args.data)
    if args.prepare_only:
        print(f"demo ready under {demo.root}")
        return 0
    q = [str(p) for p in demo.queries]
    same = next((b for b in q[1:] if os.path.basename(b).split("__")[0]
                 == os.path.basename(q[0]).split("__")[0]), q[1])
    server = f"{args.host}:{args.port}"
    http = f"http://{args.host}:{args.http_port}"
    console = (f"""
Web console: {http}/   (HTTP/JSON API: {http}/docs)
  curl -F image=@{q[0]} -F k=5 {http}/v1/search
""" if args.http_port else "")
    print(f"""
imgsim demo ({demo.data}): serving on {server}. In another shell, try:

  .venv/bin/imgsim search {q[0]} -k 5 --server {server}
  .venv/bin/imgsim verify {q[0]} {same} --server {server}
  .venv/bin/imgsim verify {q[0]} {q[-1]} --server {server}
  .venv/bin/imgsim verify {q[0]} --identity {os.path.basename(q[0]).split("__")[0]} --server {server}
  .venv/bin/imgsim describe --server {server}
  grpcurl -plaintext {server} list            # reflection is on
{console}
Held-out query images (never trained on, never indexed): {demo.root / 'queries'}
Ctrl-C stops the server.
""", flush=True)
    return _serve_until_stopped(ServeConfig(
        checkpoint=str(demo.checkpoint), index_root=str(demo.index_root),
        catalog_url=demo.catalog_url, host=args.host, port=args.port, http_port=args.http_port))


def _print_json(message, **extra) -> int:
    """A reply as one JSON object: protobuf field names, every field, counts as numbers."""
    import json

    from google.protobuf.json_format import MessageToDict

    out = MessageToDict(message, preserving_proto_field_name=True,
                        always_print_fields_with_no_presence=True)
    for f in message.DESCRIPTOR.fields:  # proto3 JSON writes 64-bit integers as strings
        if f.type in (f.TYPE_INT64, f.TYPE_UINT64) and isinstance(out.get(f.name), str):
            out[f.name] = int(out[f.name])
    print(json.dumps({**out, **extra}, indent=2, ensure_ascii=False))
    return 0


def _client(args: argparse.Namespace):
    from service.client import SimilarityClient

    return SimilarityClient(args.server, api_key=args.api_key, tls_ca=args.tls_ca,
                            timeout=args.timeout)


def _verify(args: argparse.Namespace) -> int:
    if (args.b is None) == (not args.identity):
        raise ValueError("give a second image B or --identity LABEL (one of them)")
    with _client(args) as c:
        r = c.verify(args.a, args.b, threshold=args.threshold, identity=args.identity,
                     identity_collection=args.collection)
    if args.json:
        return _print_json(r)
    verdict = "SAME" if r.same else "DIFFERENT"
    print(f"{verdict}  distance={r.distance:.4f}  similarity={r.similarity:.4f}  "
          f"threshold={r.threshold:.4f}  model={r.model_version}")
    if args.identity:
        print(f"identity {args.identity!r}: {r.enrolled_images} enrolled images, nearest "
              f"{r.nearest_key}, mean distance {r.mean_distance:.4f} (index {r.index_version})")
    return 0


def _search(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.search(args.query, args.k, collection=args.collection, labels=args.labels or (),
                     metadata=_meta(args.meta), max_distance=args.max_distance,
                     exclude_keys=args.exclude or ())
    if args.json:
        return _print_json(r)
    print(f"index {r.index_version}, model {r.model_version}")
    print(f"{'rank':>4}  {'distance':>8}  {'similarity':>10}  {'label':<20} key")
    for h in r.hits:
        meta = "  " + " ".join(f"{k}={v}" for k, v in sorted(h.metadata.items())) \
            if h.metadata else ""
        print(f"{h.rank:>4}  {h.distance:8.4f}  {h.similarity:10.4f}  {h.label:<20} {h.key}{meta}")
    return 0


def _upsert_images(args: argparse.Namespace):
    from pathlib import Path

    from service.client import UpsertImage
    from training.data.folders import list_image_folder

    meta = _meta(args.meta)
    seen: dict[str, Path] = {}
    for p in map(Path, args.paths):
        if p.is_dir():
            found = [(Path(s.path).relative_to(p).with_suffix("").as_posix(), Path(s.path),
                      s.label) for s in list_image_folder(p)]
        elif p.is_file():
            found = [(p.stem, p, args.label)]
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
        for key, f, label in found:
            if key in seen and seen[key].resolve() != f.resolve():
                # one stream, one key: the second image would silently replace the first
                raise ValueError(f"{seen[key]} and {f} would both get key {key!r} (keys are "
                                 f"file names without extension); rename one or upsert "
                                 f"them separately")
            if key not in seen:
                seen[key] = f
                yield UpsertImage(key, f, label, meta, args.collection)


def _upsert(args: argparse.Namespace) -> int:
    images = list(_upsert_images(args))  # resolve paths before streaming: fail early
    with _client(args) as c:
        r = c.upsert(images)
    if args.json:  # the reply, and which file each key was read from
        return _print_json(r, images=[{"key": im.key, "label": im.label, "file": str(im.image)}
                                      for im in images])
    # the reply counts new, replaced and unchanged images but does not say which key is which
    print(f"{len(images)} image(s) sent: {r.inserted} inserted, {r.updated} updated, "
          f"{r.unchanged} unchanged; index {r.index_version} now holds {r.count} images")
    print(f"{'key':<32} {'label':<16} file")
    for im in images:
        print(f"{im.key:<32} {im.label or '-':<16} {im.image}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.delete(args.keys, collection=args.collection, ignore_missing=args.ignore_missing)
    print(f"{r.deleted} deleted; index {r.index_version} now holds {r.count} images")
    if r.missing:
        print(f"not found: {', '.join(r.missing)}")
    return 0


def _describe(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.describe(args.collection)
    if args.json:
        return _print_json(r)
    recall = f"{r.recall_at_10:.3f}" if r.HasField("recall_at_10") else "n/a"
    params = ", ".join(f"{k}={v}" for k, v in sorted(r.search_params.items())) or "-"
    print(f"""collection     {r.collection}   (served: {', '.join(r.collections)})
model          {r.model_version}   metric {r.metric}, dimension {r.dimension}
index version  {r.index_version}   created {r.created_at}
factory        {r.factory}   search params {params}
images         {r.count}
recall@10      {recall}
threshold      {r.threshold:.4f}
face pipeline  {r.face}""")
    return 0


def _reload(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.reload(args.collection, args.version)
    same = " (unchanged)" if r.previous_version == r.index_version else ""
    print(f"{r.collection}: {r.previous_version} -> {r.index_version}{same}")
    return 0


def _server_settings(config: str | None, **overrides):
    """The server's settings (file, IMGSIM_SERVE_* env, ``overrides``), without requiring
    the ones a server needs but these commands do not."""
    from service.config import load_serve_config

    return load_serve_config(config, defaults={"checkpoint": "", "index_root": DEFAULT_INDEX_ROOT,
                                               "catalog_url": DEFAULT_CATALOG}, **overrides)


def _health(args: argparse.Namespace) -> int:
    from service.health_check import run

    return run(args)


def _blobs_gc(args: argparse.Namespace) -> int:
    from indexer.catalog import DEFAULT_COLLECTION, open_catalog
    from indexer.versions import read_manifest
    from service.config import require_catalog
    from service.store import DEFAULT_GC_MIN_AGE, BlobStore, blob_root, sweep_blobs

    cfg = _server_settings(args.config, catalog_url=args.catalog_url, blob_dir=args.blob_dir)
    roots = args.index_roots or [cfg.index_root, *cfg.extra_index_roots]
    min_age = DEFAULT_GC_MIN_AGE if args.min_age_seconds is None else args.min_age_seconds
    if min_age < 0:
        raise ValueError(f"--min-age-seconds must be >= 0, got {min_age}")
    require_catalog(cfg.catalog_url)  # a sweep against a new, empty catalogue would delete all
    sessions = open_catalog(cfg.catalog_url)
    for root in roots:
        collection = read_manifest(root).collection or DEFAULT_COLLECTION
        blobs = BlobStore(blob_root(root, collection, cfg.blob_dir))
        gone = sweep_blobs(sessions, blobs, index_root=root, collection=collection,
                           min_age_seconds=min_age, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        print(f"{collection}: {verb} {len(gone)} orphan file(s) under {blobs.root}")
        for p in gone:
            print(f"  {p}")
    return 0


def _key_sessions(args: argparse.Namespace, *, create: bool = False):
    """(sessions, URL) of the server's catalogue (its settings, or --catalog). Listing and
    revoking never create one (a missing catalogue is an error); ``create`` (a new key) may,
    as `imgsim index build` would, and the caller says where the key went."""
    from indexer.catalog import open_catalog
    from indexer.cli import _ensure_sqlite_dir
    from service.config import require_catalog
    from service.store import ensure_service_tables

    url = _server_settings(args.config, catalog_url=args.catalog_url).catalog_url
    if create:
        _ensure_sqlite_dir(url)
    else:
        require_catalog(url)
    sessions = open_catalog(url)
    ensure_service_tables(sessions)
    return sessions, url


def _keys_create(args: argparse.Namespace) -> int:
    from service.auth import create_api_key
    from service.config import safe_url

    sessions, url = _key_sessions(args, create=True)
    with sessions.begin() as s:
        key, row = create_api_key(s, name=args.name, access=args.access,
                                  collections=args.collections.split(","))
        print(f"created key {row.key_id} ({row.access} on {row.collections}) for {row.name!r} "
              f"in {safe_url(url)}.")
    print("The key (shown only now; the catalogue keeps its hash):")
    print(key)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from service.auth import list_api_keys

    with _key_sessions(args)[0]() as s:
        rows = list_api_keys(s)
    print(f"{'id':<14} {'access':<6} {'collections':<24} {'created':<20} {'revoked':<20} name")
    for r in rows:
        revoked = r.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if r.revoked_at else "-"
        print(f"{r.key_id:<14} {r.access:<6} {r.collections:<24} "
              f"{r.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {revoked:<20} {r.name}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from service.auth import revoke_api_key

    with _key_sessions(args)[0].begin() as s:
        row = revoke_api_key(s, args.key_id)
        print(f"revoked {row.key_id} ({row.name!r})")
    return 0
