"""Command-line entry points of the service: serve, demo, and the verify/search clients."""

from __future__ import annotations

import argparse
import logging
import os

from indexer.cli import DEFAULT_CATALOG, DEFAULT_INDEX_ROOT

log = logging.getLogger(__name__)
DEFAULT_SERVER = os.environ.get("IMGSIM_SERVER", "localhost:50051")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="run the gRPC server",
                       description="Serve Verify and Search over gRPC from a checkpoint, the "
                                   "current index version and the catalogue.")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--index-root", default=DEFAULT_INDEX_ROOT)
    s.add_argument("--catalog", default=DEFAULT_CATALOG)
    s.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=50051)
    s.add_argument("--max-workers", type=int, default=8)
    s.set_defaults(func=_serve)

    d = sub.add_parser("demo", help="train a demo model on real offline images, index, serve",
                       description="Prepare (once) a demo model and index under --root from "
                                   "scikit-learn's real handwritten digits, or from the image "
                                   "folder in $IMGSIM_DEMO_DATA / --data, then serve it.")
    d.add_argument("--root", default="var/demo")
    d.add_argument("--data", default=os.environ.get("IMGSIM_DEMO_DATA") or None,
                   help="image folder <label>/<image> (default: sklearn digits)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=50051)
    d.add_argument("--prepare-only", action="store_true", help="build model and index, don't serve")
    d.set_defaults(func=_demo)

    v = sub.add_parser("verify", help="ask a server whether two images match",
                       description="Verify two images (file paths, or catalogue keys) on a server.")
    v.add_argument("a")
    v.add_argument("b")
    v.add_argument("--threshold", type=float, default=None)
    v.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT (env IMGSIM_SERVER)")
    v.set_defaults(func=_verify)

    q = sub.add_parser("search", help="top-k most similar catalogued images",
                       description="Search a server's index with an image file (or a catalogue key).")
    q.add_argument("query")
    q.add_argument("-k", type=int, default=5)
    q.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT (env IMGSIM_SERVER)")
    q.set_defaults(func=_search)


def _serve(args: argparse.Namespace) -> int:
    from service.server import ServeConfig, serve_forever

    serve_forever(ServeConfig(checkpoint=args.checkpoint, index_root=args.index_root,
                              catalog_url=args.catalog, host=args.host, port=args.port,
                              max_workers=args.max_workers))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from service.demo import prepare_demo
    from service.server import ServeConfig, serve_forever

    demo = prepare_demo(args.root, data=args.data)
    if args.prepare_only:
        print(f"demo ready under {demo.root}")
        return 0
    q = [str(p) for p in demo.queries]
    same = next((b for b in q[1:] if os.path.basename(b).split("__")[0]
                 == os.path.basename(q[0]).split("__")[0]), q[1])
    server = f"{args.host}:{args.port}"
    print(f"""
imgsim demo ({demo.data}): serving on {server}. In another shell, try:

  .venv/bin/imgsim search {q[0]} -k 5 --server {server}
  .venv/bin/imgsim verify {q[0]} {same} --server {server}
  .venv/bin/imgsim verify {q[0]} {q[-1]} --server {server}
  grpcurl -plaintext {server} list            # reflection is on

Held-out query images (never trained on, never indexed): {demo.root / 'queries'}
Ctrl-C stops the server.
""", flush=True)
    serve_forever(ServeConfig(checkpoint=str(demo.checkpoint), index_root=str(demo.index_root),
                              catalog_url=demo.catalog_url, host=args.host, port=args.port))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from service.client import SimilarityClient

    with SimilarityClient(args.server) as c:
        r = c.verify(args.a, args.b, threshold=args.threshold)
    verdict = "SAME" if r.same else "DIFFERENT"
    print(f"{verdict}  distance={r.distance:.4f}  similarity={r.similarity:.4f}  "
          f"threshold={r.threshold:.4f}  model={r.model_version}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from service.client import SimilarityClient

    with SimilarityClient(args.server) as c:
        r = c.search(args.query, args.k)
    print(f"index {r.index_version}, model {r.model_version}")
    print(f"{'rank':>4}  {'distance':>8}  {'similarity':>10}  {'label':<20} key")
    for h in r.hits:
        print(f"{h.rank:>4}  {h.distance:8.4f}  {h.similarity:10.4f}  {h.label:<20} {h.key}")
    return 0
