"""Bad inputs through every RPC of imgsim.v1: the status each gets, and whether the server lives.

Starts `imgsim serve` on 127.0.0.1 over a tiny digits index (benchmarks/reliability_common.py)
and sends a corpus made here (undecodable bytes, truncated JPEG/PNG, a decompression bomb,
16-bit, CMYK, transparent, 1-pixel, SVG, text, oversized messages, absurd k, huge filters,
1 ms deadlines...) to SimilarityService (Verify, Search, BatchSearch, Embed, Upsert, Delete,
DescribeIndex, Reload), JobService (Submit, Get, List, Cancel, FetchArtifact) and
CatalogService (ListCollections, ListImages, GetImage, GetThumbnail, GetImageBytes). Prints
one row per case:
the status code per RPC ("." where the case does not apply), whether the server answered a
health check afterwards, and its RSS. INTERNAL anywhere is a finding: a client's mistake
should never read as a server fault.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bad_input.py
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_common import ServerProcess, fresh_copy, prepare  # noqa: E402

from imgsim.v1 import catalog_pb2 as cpb  # noqa: E402
from imgsim.v1 import catalog_pb2_grpc as cpb_grpc  # noqa: E402
from imgsim.v1 import jobs_pb2 as jpb  # noqa: E402
from imgsim.v1 import jobs_pb2_grpc as jpb_grpc  # noqa: E402
from imgsim.v1 import similarity_pb2 as pb  # noqa: E402
from imgsim.v1 import similarity_pb2_grpc as pb_grpc  # noqa: E402
from service.client import SimilarityClient  # noqa: E402

IMAGE_RPCS = ("Verify", "Search", "BatchSearch", "Embed", "Upsert")
RPCS = (*IMAGE_RPCS, "Delete", "DescribeIndex", "Reload",
        "Submit", "Get", "List", "Cancel", "FetchArtifact",
        "ListCollections", "ListImages", "GetImage", "GetThumbnail", "GetImageBytes")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(side: int = 30_000) -> bytes:
    """A 1-bit greyscale PNG of side x side pixels, all zero: ~100 kB, 900 Mpx decoded."""
    raw = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    body = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


def header_only_png(width: int, height: int) -> bytes:
    """A PNG header claiming width x height pixels, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def image_corpus(valid: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    img = Image.open(valid).convert("RGB")
    big = img.resize((256, 256))
    jpeg, png = _encode(big, "JPEG"), _encode(big, "PNG")
    rgba = Image.new("RGBA", (32, 32), (255, 255, 255, 0))
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32), np.uint8)) for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {
        "valid PNG (control)": valid.read_bytes(),
        "empty bytes": b"",
        "undecodable bytes": rng.integers(0, 256, 4096, np.uint8).tobytes(),
        "truncated JPEG (half)": jpeg[:len(jpeg) // 2],
        "truncated PNG (half)": png[:len(png) // 2],
        "decompression bomb PNG (900 Mpx, 113 kB)": bomb_png(),
        "PNG header claiming 2^31-1 x 2^31-1": header_only_png(2**31 - 1, 2**31 - 1),
        "16-bit greyscale PNG": _encode(Image.fromarray(
            rng.integers(0, 65535, (32, 32), np.uint16)), "PNG"),
        "CMYK JPEG": _encode(big.convert("CMYK"), "JPEG"),
        "transparent RGBA PNG": _encode(rgba, "PNG"),
        "1-pixel PNG": _encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"),
        "1 x 10000 PNG": _encode(Image.new("L", (1, 10_000), 128), "PNG"),
        "animated GIF (3 frames)": gif.getvalue(),
        "SVG": b'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32">'
               b'<rect width="32" height="32" fill="red"/></svg>',
        "plain text": b"hello, this is not an image\n" * 10,
        "oversized message (20 MB of JPEG tail)": jpeg + b"\x00" * (20 * 1024 * 1024),
    }


class Runner:
    def __init__(self, target: str, valid: bytes) -> None:
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024)])
        self.sim = pb_grpc.SimilarityServiceStub(self.channel)
        self.jobs = jpb_grpc.JobServiceStub(self.channel)
        self.cat = cpb_grpc.CatalogServiceStub(self.channel)
        self.valid = valid
        self.n = 0

    def status(self, call: Callable[[], object]) -> str:
        try:
            call()
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    def key(self) -> str:
        self.n += 1
        return f"bad-input-{self.n}"

    def image_rpcs(self, data: bytes, timeout: float = 30.0) -> dict[str, str]:
        ref, ok = pb.ImageRef(data=data), pb.ImageRef(data=self.valid)
        s = self.sim
        return {
            "Verify": self.status(lambda: s.Verify(pb.VerifyRequest(a=ref, b=ok),
                                                   timeout=timeout)),
            "Search": self.status(lambda: s.Search(pb.SearchRequest(query=ref, k=5),
                                                   timeout=timeout)),
            "BatchSearch": self.status(lambda: s.BatchSearch(pb.BatchSearchRequest(
                queries=[pb.SearchRequest(query=ref, k=5)]), timeout=timeout)),
            "Embed": self.status(lambda: s.Embed(pb.EmbedRequest(images=[ref]),
                                                 timeout=timeout)),
            "Upsert": self.status(lambda: s.Upsert(iter([pb.UpsertRequest(
                key=self.key(), data=data)]), timeout=timeout)),
        }


def other_cases(r: Runner) -> dict[str, Callable[[], dict[str, str]]]:
    s, j, c, ok = r.sim, r.jobs, r.cat, pb.ImageRef(data=r.valid)
    key = c.ListImages(cpb.ListImagesRequest(limit=1)).images[0].key  # a catalogued image

    def fetch(name: str, job: int | None = None) -> Callable[[], object]:
        def run():
            jobs = j.List(jpb.ListJobsRequest()).jobs
            return list(j.FetchArtifact(jpb.FetchArtifactRequest(
                job_id=job if job is not None else (jobs[-1].id if jobs else 1), name=name)))
        return run

    def image_calls(k: str, coll: str = "") -> dict[str, str]:
        return {"GetImage": st(lambda: c.GetImage(cpb.GetImageRequest(collection=coll, key=k))),
                "GetThumbnail": st(lambda: c.GetThumbnail(cpb.GetThumbnailRequest(
                    collection=coll, key=k))),
                "GetImageBytes": st(lambda: c.GetImageBytes(cpb.GetImageRequest(
                    collection=coll, key=k)))}

    q = lambda **kw: pb.SearchRequest(query=ok, **kw)  # noqa: E731
    st = r.status
    many_keys = [f"k{i}" for i in range(100_000)]
    cases: dict[str, Callable[[], dict[str, str]]] = {  # run one by one, lazily
        "valid calls (control)": lambda: {
            "DescribeIndex": st(lambda: s.DescribeIndex(pb.DescribeIndexRequest())),
            "List": st(lambda: j.List(jpb.ListJobsRequest())),
            "ListCollections": st(lambda: c.ListCollections(cpb.ListCollectionsRequest())),
            "ListImages": st(lambda: c.ListImages(cpb.ListImagesRequest())),
            **image_calls(key)},
        "k = -1": lambda: {"Search": st(lambda: s.Search(q(k=-1))),
                   "BatchSearch": st(lambda: s.BatchSearch(pb.BatchSearchRequest(
                       queries=[q(k=-1)])))},
        "k = 2^31-1": lambda: {"Search": st(lambda: s.Search(q(k=2**31 - 1))),
                       "BatchSearch": st(lambda: s.BatchSearch(pb.BatchSearchRequest(
                           queries=[q(k=2**31 - 1)])))},
        "max_distance = -1 / NaN": lambda: {
            "Search": st(lambda: s.Search(q(k=5, max_distance=-1.0))) + " / "
            + st(lambda: s.Search(q(k=5, max_distance=float("nan"))))},
        "5,000 metadata filter pairs": lambda: {"Search": st(lambda: s.Search(q(
            k=5, metadata={f"m{i}": "v" for i in range(5000)}))),
            "ListImages": st(lambda: c.ListImages(cpb.ListImagesRequest(
                metadata={f"m{i}": "v" for i in range(5000)})))},
        "10,000 label filters": lambda: {"Search": st(lambda: s.Search(q(
            k=5, labels=[f"l{i}" for i in range(10_000)]))),
            "ListImages": st(lambda: c.ListImages(cpb.ListImagesRequest(
                labels=[f"l{i}" for i in range(10_000)])))},
        "offset -1 / limit -1 / limit 2^31-1 / offset 2^31-1": lambda: {
            "ListImages": " / ".join(st(lambda kw=kw: c.ListImages(cpb.ListImagesRequest(**kw)))
                                     for kw in ({"offset": -1}, {"limit": -1},
                                                {"limit": 2**31 - 1}, {"offset": 2**31 - 1}))},
        "key_prefix '%' / '_' / NUL": lambda: {
            "ListImages": " / ".join(st(lambda p=p: c.ListImages(cpb.ListImagesRequest(
                key_prefix=p))) for p in ("%", "_", "\x00"))},
        "thumbnail size -1 / 2^31-1": lambda: {
            "GetThumbnail": " / ".join(st(lambda n=n: c.GetThumbnail(cpb.GetThumbnailRequest(
                key=key, size=n))) for n in (-1, 2**31 - 1))},
        "100,000 excluded keys": lambda: {"Search": st(lambda: s.Search(q(k=5, exclude_keys=many_keys)))},
        "10,000 queries / images in one call": lambda: {
            "BatchSearch": st(lambda: s.BatchSearch(pb.BatchSearchRequest(
                queries=[q(k=5)] * 10_000))),
            "Embed": st(lambda: s.Embed(pb.EmbedRequest(images=[ok] * 10_000)))},
        "unknown key as image": lambda: {
            "Verify": st(lambda: s.Verify(pb.VerifyRequest(a=pb.ImageRef(key="nope"), b=ok))),
            "Search": st(lambda: s.Search(pb.SearchRequest(query=pb.ImageRef(key="nope"), k=5))),
            "Embed": st(lambda: s.Embed(pb.EmbedRequest(images=[pb.ImageRef(key="nope")]))),
            **image_calls("nope")},
        "unknown collection": lambda: {
            "Search": st(lambda: s.Search(q(k=5, collection="nope"))),
            "Upsert": st(lambda: s.Upsert(iter([pb.UpsertRequest(
                key=r.key(), data=r.valid, collection="nope")]))),
            "Delete": st(lambda: s.Delete(pb.DeleteRequest(keys=["x"], collection="nope"))),
            "DescribeIndex": st(lambda: s.DescribeIndex(pb.DescribeIndexRequest(
                collection="nope"))),
            "Reload": st(lambda: s.Reload(pb.ReloadRequest(collection="nope"))),
            "ListImages": st(lambda: c.ListImages(cpb.ListImagesRequest(collection="nope"))),
            **image_calls(key, "nope")},
        "1 MB collection name": lambda: {
            "Search": st(lambda: s.Search(q(k=5, collection="c" * 2**20))),
            "DescribeIndex": st(lambda: s.DescribeIndex(pb.DescribeIndexRequest(
                collection="c" * 2**20))),
            "ListImages": st(lambda: c.ListImages(cpb.ListImagesRequest(
                collection="c" * 2**20)))},
        "empty stream / no keys": lambda: {
            "Upsert": st(lambda: s.Upsert(iter([]))),
            "Delete": st(lambda: s.Delete(pb.DeleteRequest(keys=[])))},
        "key with a NUL byte": lambda: {
            "Upsert": st(lambda: s.Upsert(iter([pb.UpsertRequest(key="a\x00b", data=r.valid)]))),
            "Delete": st(lambda: s.Delete(pb.DeleteRequest(keys=["a\x00b"]))),
            **image_calls("a\x00b")},
        "10,000-character key": lambda: {
            "Upsert": st(lambda: s.Upsert(iter([pb.UpsertRequest(key="k" * 10_000,
                                                                   data=r.valid)]))),
            "Delete": st(lambda: s.Delete(pb.DeleteRequest(keys=["k" * 10_000]))),
            **image_calls("k" * 10_000)},
        "same key twice in one stream": lambda: {"Upsert": st(lambda: s.Upsert(iter([
            pb.UpsertRequest(key="twice", data=r.valid)] * 2)))},
        "2,000 items in one stream": lambda: {"Upsert": st(lambda: s.Upsert(iter([
            pb.UpsertRequest(key=f"many-{i}", data=r.valid) for i in range(2000)])))},
        "unknown keys / 100,000 keys": lambda: {
            "Delete": st(lambda: s.Delete(pb.DeleteRequest(keys=["nope"]))) + " / "
            + st(lambda: s.Delete(pb.DeleteRequest(keys=many_keys)))},
        "version '../../etc' / unknown": lambda: {
            "Reload": st(lambda: s.Reload(pb.ReloadRequest(version="../../etc"))) + " / "
            + st(lambda: s.Reload(pb.ReloadRequest(version="v19700101T000000000000Z")))},
        "unknown kind / params not JSON / params a list": lambda: {
            "Submit": " / ".join([
                st(lambda: j.Submit(jpb.SubmitJobRequest(kind="nope", params_json="{}"))),
                st(lambda: j.Submit(jpb.SubmitJobRequest(kind="tsne", params_json="{"))),
                st(lambda: j.Submit(jpb.SubmitJobRequest(kind="tsne", params_json="[]")))])},
        "10 MB params_json / unknown parameter": lambda: {
            "Submit": st(lambda: j.Submit(jpb.SubmitJobRequest(
                kind="tsne", params_json=json.dumps({"images": "x" * 10_000_000})))) + " / "
            + st(lambda: j.Submit(jpb.SubmitJobRequest(kind="tsne",
                                                         params_json='{"nope": 1}')))},
        "id 0 / -1 / 2^63-1": lambda: {
            "Get": " / ".join(st(lambda i=i: j.Get(jpb.GetJobRequest(id=i)))
                              for i in (0, -1, 2**63 - 1)),
            "Cancel": " / ".join(st(lambda i=i: j.Cancel(jpb.CancelJobRequest(id=i)))
                                 for i in (0, -1, 2**63 - 1))},
        "artifact '../../../../etc/passwd' / '/etc/passwd' / unknown job": lambda: {
            "FetchArtifact": " / ".join(st(f) for f in (
                fetch("../../../../etc/passwd"), fetch("/etc/passwd"),
                fetch("report.html", job=2**62)))},
        "limit -1 / 2^31-1, state 99": lambda: {
            "List": " / ".join([st(lambda: j.List(jpb.ListJobsRequest(limit=-1))),
                                st(lambda: j.List(jpb.ListJobsRequest(limit=2**31 - 1))),
                                st(lambda: j.List(jpb.ListJobsRequest(state=99)))])},
    }
    ms = 0.001  # a 1 ms deadline on every RPC
    cases["1 ms deadline"] = lambda: {
        "Verify": st(lambda: s.Verify(pb.VerifyRequest(a=ok, b=ok), timeout=ms)),
        "Search": st(lambda: s.Search(q(k=5), timeout=ms)),
        "BatchSearch": st(lambda: s.BatchSearch(pb.BatchSearchRequest(queries=[q(k=5)] * 8),
                                                timeout=ms)),
        "Embed": st(lambda: s.Embed(pb.EmbedRequest(images=[ok] * 8), timeout=ms)),
        "Upsert": st(lambda: s.Upsert(iter([pb.UpsertRequest(key=r.key(), data=r.valid)]),
                                      timeout=ms)),
        "Delete": st(lambda: s.Delete(pb.DeleteRequest(keys=["nope"]), timeout=ms)),
        "DescribeIndex": st(lambda: s.DescribeIndex(pb.DescribeIndexRequest(), timeout=ms)),
        "Reload": st(lambda: s.Reload(pb.ReloadRequest(), timeout=ms)),
        "Submit": st(lambda: j.Submit(jpb.SubmitJobRequest(kind="nope"), timeout=ms)),
        "Get": st(lambda: j.Get(jpb.GetJobRequest(id=1), timeout=ms)),
        "List": st(lambda: j.List(jpb.ListJobsRequest(), timeout=ms)),
        "Cancel": st(lambda: j.Cancel(jpb.CancelJobRequest(id=1), timeout=ms)),
        "FetchArtifact": st(lambda: list(j.FetchArtifact(jpb.FetchArtifactRequest(
            job_id=1, name="report.html"), timeout=ms))),
        "ListCollections": st(lambda: c.ListCollections(cpb.ListCollectionsRequest(),
                                                        timeout=ms)),
        "ListImages": st(lambda: c.ListImages(cpb.ListImagesRequest(), timeout=ms)),
        "GetImage": st(lambda: c.GetImage(cpb.GetImageRequest(key=key), timeout=ms)),
        "GetThumbnail": st(lambda: c.GetThumbnail(cpb.GetThumbnailRequest(key=key),
                                                  timeout=ms)),
        "GetImageBytes": st(lambda: c.GetImageBytes(cpb.GetImageRequest(key=key),
                                                    timeout=ms)),
    }
    return cases


def table(res: dict) -> str:
    head = ["| case | " + " | ".join(RPCS) + " | alive | RSS MiB |",
            "|---|" + "---|" * len(RPCS) + "---|---:|"]
    rows = []
    for c in res["cases"]:
        cells = [c["status"].get(rpc, ".") for rpc in RPCS]
        rows.append(f"| {c['case']} | " + " | ".join(cells)
                    + f" | {'yes' if c['alive'] else 'NO'} | {c['rss_mb']:.0f} |")
    return "\n".join(head + rows)


def repeat_each(server: ServerProcess, corpus: dict[str, bytes], valid: bytes, n: int,
                out: Path, *, only: str = "") -> int:
    """RSS after each of ``n`` repetitions of each case, cases in table order."""
    r = Runner(server.target, valid)
    cases = {k: (lambda d=d: r.image_rpcs(d)) for k, d in corpus.items()}
    cases.update(other_cases(r))
    cases = {k: v for k, v in cases.items() if only in k}
    rows = {"start": [server.rss_mb()]}
    try:
        for case, run in cases.items():
            rows[case] = []
            for _ in range(n):
                run()
                time.sleep(0.5)
                rows[case].append(server.rss_mb())
    finally:
        server.stop()
    (out / "repeat_each.json").write_text(json.dumps(rows, indent=2))
    print("| case | RSS MiB after each repetition |\n|---|---|")
    for case, xs in rows.items():
        print(f"| {case} | {', '.join(f'{x:.0f}' for x in xs)} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bad_input")
    p.add_argument("--rounds", type=int, default=3,
                   help="send the whole corpus this many times; the table shows the first, "
                        "RSS after each tells a leak from a high-water mark")
    p.add_argument("--repeat-each", type=int, default=0,
                   help="instead: send each case this many times in a row on a fresh server "
                        "and print the RSS after each repetition (which case grows it)")
    p.add_argument("--only", default="", help="with --repeat-each: cases whose name has this")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    golden = prepare(out / "ws", per_class=20)
    ws = fresh_copy(golden, out / "serve")
    valid = sorted(ws.queries.rglob("*.png"))[0]
    corpus = image_corpus(valid)
    server = ServerProcess(ws, out / "server.log", metrics_port=0).start()
    if args.repeat_each:
        return repeat_each(server, corpus, valid.read_bytes(), args.repeat_each, out,
                           only=args.only)
    res: dict = {"cases": []}
    try:
        r = Runner(server.target, valid.read_bytes())
        res["rss_start_mb"] = server.rss_mb()

        def alive() -> bool:
            if not server.alive():
                return False
            try:
                with SimilarityClient(server.target, timeout=10) as c:
                    return c.health() == "SERVING"
            except Exception:
                return False

        def record(case: str, status: dict[str, str]) -> None:
            res["cases"].append({"case": case, "status": status, "alive": alive(),
                                 "rss_mb": server.rss_mb()})
            print(json.dumps(res["cases"][-1]), flush=True)
            if not res["cases"][-1]["alive"]:  # later rows would say nothing: restart
                server.kill()
                server.start()

        res["rss_after_round_mb"] = []
        for n in range(args.rounds):
            if n:  # the same calls again, unrecorded
                for data in corpus.values():
                    r.image_rpcs(data)
                for run in other_cases(r).values():
                    run()
            else:
                for case, data in corpus.items():
                    record(case, r.image_rpcs(data))
                for case, run in other_cases(r).items():
                    record(case, run())
            time.sleep(2)
            res["rss_after_round_mb"].append(server.rss_mb())
        res["rss_end_mb"] = server.rss_mb()
        res["alive_at_end"] = alive()
    finally:
        res["exit_code_after_sigterm"] = server.stop()
    res["internal"] = [f"{c['case']}: {rpc}" for c in res["cases"]
                       for rpc, s in c["status"].items() if "INTERNAL" in s or "UNKNOWN" in s]
    (out / "bad_input.json").write_text(json.dumps(res, indent=2))
    print(table(res))
    print(f"RSS {res['rss_start_mb']:.0f} -> {res['rss_end_mb']:.0f} MiB (after each round: "
          f"{', '.join(f'{x:.0f}' for x in res['rss_after_round_mb'])}); alive at the end: "
          f"{res['alive_at_end']}; exit code after SIGTERM: {res['exit_code_after_sigterm']}")
    print("INTERNAL/UNKNOWN:", "; ".join(res["internal"]) or "none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
