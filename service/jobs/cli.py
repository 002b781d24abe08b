"""Command line of the offline jobs: `imgsim jobs ...` (queue, worker, local runs) and
`imgsim segment train|predict|eval`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from indexer.cli import DEFAULT_CATALOG
from training.settings import data_root

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    _register_jobs(sub)
    _register_segment(sub)


# -- imgsim jobs ----------------------------------------------------------------------------
def _register_jobs(sub: argparse._SubParsersAction) -> None:
    from service.cli import int_in

    j = sub.add_parser("jobs", help="offline jobs: submit, inspect, cancel, run a worker",
                       description="Offline jobs (segmentation, visualization, clustering). "
                                   "Jobs are queued in the catalogue DB and executed by a worker "
                                   "(`imgsim jobs worker`, or the server's own worker threads); "
                                   "each writes PNG/HTML/mask artifacts under its folder. "
                                   "`imgsim jobs kinds` lists the kinds and their parameters.")
    jsub = j.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")

    def target(p: argparse.ArgumentParser) -> None:
        _catalog_of_server(p)
        p.add_argument("--server", default=_server_if_set(),
                       help="HOST:PORT: go through the server's gRPC JobService instead of "
                            "the DB (env IMGSIM_SERVER)")
        p.add_argument("--api-key", default=os.environ.get("IMGSIM_API_KEY"),
                       help="with --server: API key (env IMGSIM_API_KEY); submit/cancel need "
                            "a write key")
        p.add_argument("--tls-ca", default=os.environ.get("IMGSIM_TLS_CA"),
                       help="with --server: CA certificate (PEM) of a TLS server")

    def params(p: argparse.ArgumentParser) -> None:
        p.add_argument("kind", help="job kind (see `imgsim jobs kinds`)")
        p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                       help="a parameter; VALUE is read as JSON when it parses (numbers, "
                            "true/false, [lists]), else as a string. Repeatable.")
        p.add_argument("--params-json", default=None, help="all parameters as one JSON object")

    k = jsub.add_parser("kinds", help="list job kinds and their parameters",
                        description="List every job kind with its parameters: type, default "
                                    "and what each does.")
    k.set_defaults(func=_kinds)

    s = jsub.add_parser("submit", help="queue a job", description="Queue a job for a worker; "
                        "prints its id. Parameters are checked before it is queued.")
    params(s)
    target(s)
    s.add_argument("--wait", action="store_true", help="poll until the job finishes")
    s.set_defaults(func=_submit)

    g = jsub.add_parser("get", help="show one job", description="Show a job's state, progress, "
                        "error and artifacts.")
    g.add_argument("id", type=int)
    target(g)
    g.add_argument("--json", action="store_true", help="print the job as JSON")
    g.set_defaults(func=_get)

    ls = jsub.add_parser("list", help="list recent jobs", description="List jobs, newest first.")
    target(ls)
    ls.add_argument("--state", default=None, help="queued|running|succeeded|failed|cancelled")
    ls.add_argument("--kind", default="")
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(func=_list)

    c = jsub.add_parser("cancel", help="cancel a queued or running job",
                        description="Cancel a job: a queued job is cancelled at once, a running "
                                    "one stops at its next progress report.")
    c.add_argument("id", type=int)
    target(c)
    c.set_defaults(func=_cancel)

    w = jsub.add_parser("worker", help="run queued jobs (outside the server)",
                        description="Claim queued jobs from the catalogue DB and run them. "
                                    "Several workers (processes or hosts) may share one DB.")
    _catalog_of_server(w)
    w.add_argument("--artifacts", default=None,
                   help="folder for job outputs (env IMGSIM_JOBS_ROOT; default var/jobs)")
    w.add_argument("--concurrency", type=int_in(1), default=1, help="jobs run at the same time")
    w.add_argument("--poll", type=float, default=1.0, help="seconds between queue polls")
    w.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    w.add_argument("--lease", type=float, default=120.0,
                   help="seconds without a heartbeat after which another worker's running job "
                        "is failed as orphaned (its worker died); heartbeats come every lease/8")
    w.add_argument("--checkpoint", default=None, help="default model for jobs that need one")
    w.add_argument("--index-root", default=None, help="default index for jobs that need one")
    w.add_argument("--data-root", default=None,
                   help="datasets folder (env IMGSIM_DATA; default ../shared/data)")
    w.set_defaults(func=_worker)

    r = jsub.add_parser("run", help="run one job here and now (no queue)",
                        description="Run a job kind in this process, writing its artifacts and "
                                    "report.html to --out; nothing is queued.")
    params(r)
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--checkpoint", default=None, help="default model for jobs that need one")
    r.add_argument("--data-root", default=None,
                   help="datasets folder (env IMGSIM_DATA; default ../shared/data)")
    r.set_defaults(func=_run)


def _server_if_set() -> str | None:
    """IMGSIM_SERVER when it is set: the jobs commands go to the DB unless a server is named."""
    from training.settings import DEFAULT, client_settings

    client, sources = client_settings()
    return client.server if sources["server"] != DEFAULT else None


def _catalog_of_server(p: argparse.ArgumentParser) -> None:
    from service.health_check import add_config_argument

    add_config_argument(p)
    p.add_argument("--catalog", default=None,
                   help="catalogue DB URL holding the jobs table (default: the server's, from "
                        f"--config or IMGSIM_SERVE_CATALOG_URL, else {DEFAULT_CATALOG})")


def _catalog_url(args: argparse.Namespace, *, create: bool) -> str:
    """The catalogue of the server these jobs run beside (its settings, or --catalog).
    ``create``: a SQLite file may be created (queueing and running jobs without a server);
    else it must exist (reading or cancelling jobs never creates a database)."""
    from indexer.cli import _ensure_sqlite_dir
    from service.cli import _server_settings
    from service.config import require_catalog

    url = _server_settings(args.config, catalog_url=args.catalog).catalog_url
    if create:
        _ensure_sqlite_dir(url)
    else:
        require_catalog(url)
    return url


def _parse_params(args: argparse.Namespace) -> dict:
    out: dict = {}
    if args.params_json:
        try:
            out.update(json.loads(args.params_json))
        except json.JSONDecodeError as e:
            raise ValueError(f"--params-json is not valid JSON: {e}") from e
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"parameter {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _core(args: argparse.Namespace, *, create: bool):
    from service.jobs.core import JobsCore
    from service.jobs.store import open_job_store

    return JobsCore(open_job_store(_catalog_url(args, create=create)))


def _backend(args: argparse.Namespace, *, create: bool = False):
    """The gRPC client when --server is given, else the core on the DB; both answer JobInfo.
    ``create``: see :func:`_catalog_url`."""
    if args.server:
        from service.jobs.client import JobClient

        return JobClient(args.server, api_key=args.api_key, tls_ca=args.tls_ca)
    return _CoreBackend(_core(args, create=create))


class _CoreBackend:
    """JobsCore for the CLI: its domain errors become ValueErrors (stderr + exit status 2)."""

    def __init__(self, core) -> None:
        self.core = core

    def __getattr__(self, name):
        from service.errors import ServiceError

        fn = getattr(self.core, name)

        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ServiceError as e:
                raise ValueError(str(e)) from e
        return call

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _print_job(job, *, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(job.to_dict(), indent=2))
        return
    print(f"job {job.id} ({job.kind}): {job.state.value} {job.progress:.0%}  {job.message}")
    if job.error:
        print(f"error: {job.error.splitlines()[0]}")
    for a in job.artifacts:
        print(f"  {a.path}" + (f"  ({a.caption})" if a.caption else ""))


def _kinds(args: argparse.Namespace) -> int:
    import dataclasses
    import typing

    from service.jobs.params import param_help
    from service.jobs.registry import load_builtin_kinds

    for name, kind in sorted(load_builtin_kinds().items()):
        print(f"{name}: {kind.help}")
        hints = typing.get_type_hints(kind.params)
        rows = []
        for f in dataclasses.fields(kind.params):
            default = ("(required)" if f.default is dataclasses.MISSING
                       and f.default_factory is dataclasses.MISSING else
                       f"= {json.dumps(_jsonable(f.default))}"
                       if f.default is not dataclasses.MISSING else "")
            rows.append((f"{f.name}: {_type_name(hints[f.name])} {default}", param_help(f)))
        width = min(max((len(r[0]) for r in rows), default=0), 36)
        for left, text in rows:  # a long declaration gets its description on the next line
            print(f"    {left:<{width}}  {text}" if len(left) <= width else
                  f"    {left}\n    {'':<{width}}  {text}")
    return 0


def _type_name(tp) -> str:
    """int, str, list of str, float or null: the parameter's type as -p takes it (JSON)."""
    import types
    import typing

    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _jsonable(value):
    """A default as -p takes it: JSON (tuples as lists, None as null)."""
    return list(value) if isinstance(value, tuple) else value


def _submit(args: argparse.Namespace) -> int:
    import time

    from service.jobs.store import TERMINAL

    with _backend(args, create=True) as b:
        job = b.submit(args.kind, _parse_params(args))
        print(f"submitted job {job.id} ({job.kind})")
        while args.wait and job.state not in TERMINAL:
            time.sleep(1.0)
            job = b.get(job.id)
        if args.wait:
            _print_job(job)
            return 0 if job.state.value == "succeeded" else 1
    return 0


def _get(args: argparse.Namespace) -> int:
    with _backend(args) as b:
        _print_job(b.get(args.id), as_json=args.json)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _backend(args) as b:
        jobs = b.list(state=args.state, kind=args.kind, limit=args.limit)
    print(f"{'id':>5}  {'kind':<16} {'state':<10} {'progress':>8}  message")
    for j in jobs:
        print(f"{j.id:>5}  {j.kind:<16} {j.state.value:<10} {j.progress:8.0%}  {j.message}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _backend(args) as b:
        _print_job(b.cancel(args.id))
    return 0


def _worker(args: argparse.Namespace) -> int:
    import signal

    from service.jobs.context import JobDefaults
    from service.jobs.worker import JobWorker, WorkerConfig, default_artifacts_root
    from training.checkpoint import load_checkpoint

    if args.checkpoint:  # fail now, not on the first job that needs it
        load_checkpoint(args.checkpoint)
    catalog = _catalog_url(args, create=True)
    cfg = WorkerConfig(catalog_url=catalog,
                       artifacts_root=args.artifacts or default_artifacts_root(),
                       concurrency=args.concurrency, poll_seconds=args.poll,
                       lease_seconds=args.lease, heartbeat_seconds=args.lease / 8,
                       defaults=JobDefaults(checkpoint=args.checkpoint,
                                            index_root=args.index_root,
                                            catalog_url=catalog,
                                            data_root=args.data_root or str(data_root())))
    worker = JobWorker(cfg)
    if args.once:
        done = worker.run_until_empty()
        print(f"ran {len(done)} job(s): {done}")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: worker.stop(wait=False))
    log.info("job worker %s polling %s", worker.name, catalog)
    worker.run_forever()
    return 0


def _run(args: argparse.Namespace) -> int:
    from service.jobs.context import JobCancelled, JobContext, JobDefaults
    from service.jobs.params import parse_params
    from service.jobs.registry import get_kind

    kind = get_kind(args.kind)
    params = parse_params(kind, _parse_params(args))
    ctx = JobContext(None, args.kind, args.out,
                     defaults=JobDefaults(checkpoint=args.checkpoint,
                                          data_root=args.data_root or str(data_root())))
    try:
        kind.run(params, ctx)
    except JobCancelled:  # pragma: no cover - no cancel source in a local run
        return 1
    report = ctx.write_report()
    for a in ctx.artifacts:
        print(a["path"])
    print(f"report: {report}", file=sys.stderr)
    return 0


# -- imgsim segment -------------------------------------------------------------------------
def _register_segment(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser("segment", help="U-Net / SegNet segmentation (ISBI 2012)",
                         description="Train, apply and score U-Net and SegNet segmenters of "
                                     "electron-microscopy membranes (ISBI 2012).")
    ssub = seg.add_subparsers(dest="segment_command", required=True, metavar="COMMAND")
    # train's and eval's flags are added when used (imgsim.cli.CommandParser): their choices and
    # defaults come from training.segmentation, which imports torch
    ssub.add_parser("train", help="train on labelled slices, score held-out slices",
                    description="Train on random augmented tiles (elastic deformation, "
                                "flips, rotations) of --train-slices; score --val-slices "
                                "with overlap-tile inference; write <out>/model.pt.",
                    arguments=_seg_train_arguments)

    p = ssub.add_parser("predict", help="segment image files: masks and overlays",
                        description="Segment images of any size with overlap-tile inference; "
                                    "writes <stem>_mask.png (black = membrane), _prob.png and "
                                    "_overlay.png per image into --out.")
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    _infer_args(p)
    p.set_defaults(func=_seg_predict)

    ssub.add_parser("eval", help="score labelled slices",
                    description="Pixel error, foreground (membrane) IoU and adapted Rand "
                                "error on labelled ISBI slices; overlays into --out.",
                    arguments=_seg_eval_arguments)


def _seg_train_arguments(t: argparse.ArgumentParser) -> None:
    from training.segmentation.models import ARCHITECTURES, UPSAMPLERS
    from training.segmentation.train import WEIGHT_MAPS, SegTrainConfig, default_isbi_dir

    d = SegTrainConfig()
    t.add_argument("--data", default=default_isbi_dir(), help="ISBI 2012 folder (default %(default)s)")
    t.add_argument("--out", required=True)
    t.add_argument("--arch", default=d.arch, choices=sorted(ARCHITECTURES))
    t.add_argument("--upsampling", default=None, choices=sorted(UPSAMPLERS),
                   help="decoder upsampling (default: transposed for unet, unpool for segnet)")
    t.add_argument("--width", type=int, default=d.width, help="channels of the first level")
    t.add_argument("--depth", type=int, default=d.depth, help="number of poolings")
    t.add_argument("--train-slices", default=d.train_slices)
    t.add_argument("--val-slices", default=d.val_slices, help="held out; '' for none")
    t.add_argument("--tile", type=int, default=d.tile)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--max-seconds", type=float, default=None, help="wall-time budget")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--weight-map", default=d.weight_map, choices=WEIGHT_MAPS,
                   help="pixel weights: none, class balance, or the U-Net border weights")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--threads", type=int, default=None, help="torch threads")
    t.set_defaults(func=_seg_train)


def _seg_eval_arguments(e: argparse.ArgumentParser) -> None:
    from training.segmentation.train import SegTrainConfig, default_isbi_dir

    d = SegTrainConfig()
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", default=default_isbi_dir())
    e.add_argument("--slices", default=d.val_slices)
    e.add_argument("--out", default=None, help="folder for overlays (default: a temp folder)")
    _infer_args(e)
    e.add_argument("--grow-cells", action="store_true",
                   help="score the Rand error after the predicted cells take over the "
                        "predicted membrane (nearest cell; forgives thick membranes, not gaps)")
    e.set_defaults(func=_seg_eval)


def _infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, default=0.5, help="membrane probability threshold")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--margin", type=int, default=32, help="overlap-tile context margin")
    p.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")


def _seg_train(args: argparse.Namespace) -> int:
    from training.checkpoint import load_seg_checkpoint
    from training.segmentation.train import SegTrainConfig, train_segmenter

    up = args.upsampling or ("unpool" if args.arch == "segnet" else "transposed")
    cfg = SegTrainConfig(data=args.data, out=args.out, arch=args.arch, upsampling=up,
                         width=args.width, depth=args.depth, train_slices=args.train_slices,
                         val_slices=args.val_slices, tile=args.tile, batch_size=args.batch_size,
                         steps=args.steps, max_seconds=args.max_seconds, lr=args.lr,
                         weight_map=args.weight_map, augment=not args.no_augment,
                         seed=args.seed, threads=args.threads)
    path = train_segmenter(cfg)
    m = load_seg_checkpoint(path).metrics
    print(f"wrote {path} ({m['steps']} steps, {m['train_seconds']:.0f}s)")
    if "val" in m:
        v = m["val"]
        print(f"held-out slices {args.val_slices}: pixel error {v['pixel_error']:.4f}  "
              f"foreground IoU {v['foreground_iou']:.4f}  Rand error {v['rand_error']:.4f}")
    return 0


def _seg_predict(args: argparse.Namespace) -> int:
    from training.segmentation.predict import predict_files

    rows = predict_files(args.checkpoint, args.images, args.out, threshold=args.threshold,
                         tile=args.tile, margin=args.margin, tta=args.tta)
    for r in rows:
        print(f"{r['name']}: {r['mask']}  {r['overlay']}")
    return 0


def _seg_eval(args: argparse.Namespace) -> int:
    import tempfile

    from training.segmentation.predict import evaluate_slices

    out = args.out or tempfile.mkdtemp(prefix="imgsim-seg-eval-")
    mean, rows = evaluate_slices(args.checkpoint, args.data, args.slices, out,
                                 threshold=args.threshold, tile=args.tile, margin=args.margin,
                                 tta=args.tta, grow_cells=args.grow_cells)
    print(f"{'slice':>6}  {'pixel err':>9}  {'fg IoU':>7}  {'Rand err':>8}")
    for r in rows:
        print(f"{r['slice']:>6}  {r['pixel_error']:9.4f}  {r['foreground_iou']:7.4f}  "
              f"{r['rand_error']:8.4f}")
    print(f"{'mean':>6}  {mean['pixel_error']:9.4f}  {mean['foreground_iou']:7.4f}  "
          f"{mean['rand_error']:8.4f}")
    print(f"overlays in {Path(out)}")
    return 0
