"""Hostile clients of the real server: a client's error is answered, logged and counted as the
client's (never INTERNAL, never a traceback), and the server stays up."""

import logging
import shutil
import time

import grpc
import pytest
from sqlalchemy import select

from imgsim.v1 import jobs_pb2 as jpb
from imgsim.v1 import jobs_pb2_grpc as jpb_grpc
from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc
from indexer.catalog import ImageRow
from service.metrics import Metrics
from service.server import ServeConfig, Server
from service.servicer import SimilarityServicer
from tests.service.conftest import digit, make_core

pytestmark = pytest.mark.slow

LIMIT = 1024 * 1024  # the server's message size limit in these tests


@pytest.fixture(scope="module")
def served(golden, tiny_checkpoint, tmp_path_factory):
    ws = tmp_path_factory.mktemp("hostile")
    shutil.copytree(golden, ws, dirs_exist_ok=True)
    cfg = ServeConfig(checkpoint=str(tiny_checkpoint), index_root=str(ws / "idx"),
                      catalog_url=f"sqlite:///{ws / 'cat.db'}", host="127.0.0.1", port=0,
                      max_message_bytes=LIMIT, watch_seconds=0,
                      job_threads=0)  # queue jobs, run none
    server = Server(cfg)
    assert server.ready.wait(60) and server.load_error is None
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}",
                                    options=[("grpc.max_send_message_length", 8 * LIMIT)])
    yield server, pb_grpc.SimilarityServiceStub(channel), jpb_grpc.JobServiceStub(channel), channel
    channel.close()
    server.stop(0)


def counts(server) -> dict[tuple[str, str], float]:
    return {(s.labels["method"], s.labels["code"]): s.value
            for m in server.metrics.registry.collect() if m.name == "imgsim_requests"
            for s in m.samples if s.name.endswith("_total")}


def wait_for_count(server, key, at_least, timeout=10.0) -> float:
    """The server records a call when its handler returns, which may be after the client has
    its answer (a refused message ends the call on the client's side first)."""
    end = time.monotonic() + timeout
    while counts(server).get(key, 0) < at_least and time.monotonic() < end:
        time.sleep(0.05)
    return counts(server).get(key, 0)


def server_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR
            and (r.name.startswith("service") or r.name.startswith("grpc"))]


def test_an_oversized_upsert_message_is_the_clients_error_and_applies_nothing(
        served, digits_dir, caplog):
    server, stub, _, _ = served
    count = stub.DescribeIndex(pb.DescribeIndexRequest(), timeout=10).count
    before = counts(server)
    good = [pb.UpsertRequest(key=f"big/{i}", data=digit(digits_dir, "6", i).read_bytes())
            for i in range(3)]
    huge = pb.UpsertRequest(key="big/huge", data=b"\0" * (2 * LIMIT))
    with caplog.at_level(logging.INFO):
        with pytest.raises(grpc.RpcError) as e:
            stub.Upsert(iter([*good, huge]), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert wait_for_count(server, ("Upsert", "CANCELLED"),
                              before.get(("Upsert", "CANCELLED"), 0) + 1) == \
            before.get(("Upsert", "CANCELLED"), 0) + 1
    assert counts(server).get(("Upsert", "INTERNAL"), 0) == 0
    assert server_errors(caplog) == []
    warned = [r for r in caplog.records if r.name == "service.servicer"
              and r.levelno == logging.WARNING and "Upsert CANCELLED" in r.getMessage()]
    assert len(warned) == 1 and warned[0].exc_info is None
    # all or nothing: the three items read before the refused message were not applied
    assert stub.DescribeIndex(pb.DescribeIndexRequest(), timeout=10).count == count
    with pytest.raises(grpc.RpcError) as e:
        stub.Search(pb.SearchRequest(query=pb.ImageRef(key="big/0"), k=1), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_call_without_a_deadline_is_answered(served, digits_dir):
    """grpcurl and most clients set no deadline; the server's waits must not overflow."""
    server, stub, _, _ = served
    img = digit(digits_dir, "3").read_bytes()
    r = stub.Search(pb.SearchRequest(query=pb.ImageRef(data=img), k=3))
    assert len(r.hits) == 3
    v = stub.Verify(pb.VerifyRequest(a=pb.ImageRef(data=img), b=pb.ImageRef(data=img)))
    assert v.same
    assert counts(server).get(("Search", "INTERNAL"), 0) == 0


def test_bytes_that_are_not_the_message_are_invalid_argument(served, caplog):
    server, _, _, channel = served
    before = counts(server).get(("DescribeIndex", "INVALID_ARGUMENT"), 0)
    describe = channel.unary_unary("/imgsim.v1.SimilarityService/DescribeIndex")
    submit = channel.unary_unary("/imgsim.v1.JobService/Submit")
    with caplog.at_level(logging.INFO):
        for call in (describe, submit):
            for raw in (b"\x0a\x02\xff\xfe", b"\x0a\x7f"):  # bad UTF-8; a truncated field
                with pytest.raises(grpc.RpcError) as e:
                    call(raw, timeout=10)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not a valid message" in e.value.details()
    assert counts(server)[("DescribeIndex", "INVALID_ARGUMENT")] == before + 2
    assert counts(server)[("JobService.Submit", "INVALID_ARGUMENT")] >= 2
    assert server_errors(caplog) == []


def test_hostile_requests_through_every_rpc_never_answer_internal(served, digits_dir, caplog):
    server, stub, jobs, _ = served
    img = digit(digits_dir, "4").read_bytes()

    def q(**kw):
        return pb.SearchRequest(query=pb.ImageRef(data=img), **kw)

    def up(**kw):
        return lambda: stub.Upsert(iter([pb.UpsertRequest(**{"key": "h/1", "data": img, **kw})]),
                                   timeout=10)

    bad = grpc.StatusCode
    late = {bad.DEADLINE_EXCEEDED, bad.OK}  # 1 ms: almost always past; never INTERNAL
    cases = {
        "k absurd": (lambda: stub.Search(q(k=2**31 - 1), timeout=10), bad.INVALID_ARGUMENT),
        "k negative": (lambda: stub.Search(q(k=-3), timeout=10), bad.INVALID_ARGUMENT),
        "1000 metadata filters": (lambda: stub.Search(q(k=3, metadata={
            f"m{i}": "x" for i in range(1000)}), timeout=10), bad.INVALID_ARGUMENT),
        "NUL label": (lambda: stub.Search(q(k=3, labels=["a\0"]), timeout=10),
                      bad.INVALID_ARGUMENT),
        "NUL metadata name": (lambda: stub.Search(q(k=3, metadata={"\0": "x"}), timeout=10),
                              bad.INVALID_ARGUMENT),
        "empty excluded key": (lambda: stub.Search(q(k=3, exclude_keys=[""]), timeout=10),
                               bad.INVALID_ARGUMENT),
        "huge batch": (lambda: stub.BatchSearch(pb.BatchSearchRequest(queries=[pb.SearchRequest(
            query=pb.ImageRef(key="1/0000"), k=1)] * 5000),
                                                timeout=10), bad.INVALID_ARGUMENT),
        "batch filters": (lambda: stub.BatchSearch(pb.BatchSearchRequest(queries=[
            q(k=1), q(k=1, labels=[str(i) for i in range(300)])]), timeout=10),
            bad.INVALID_ARGUMENT),
        "empty embed": (lambda: stub.Embed(pb.EmbedRequest(), timeout=10), bad.INVALID_ARGUMENT),
        "NUL identity": (lambda: stub.Verify(pb.VerifyRequest(a=pb.ImageRef(data=img),
                                                              identity="x\0"), timeout=10),
                         bad.INVALID_ARGUMENT),
        "NUL key": (up(key="a\0b"), bad.INVALID_ARGUMENT),
        "newline key": (up(key="a\nb"), bad.INVALID_ARGUMENT),
        "NUL label upsert": (up(label="\0"), bad.INVALID_ARGUMENT),
        "quoted metadata name": (up(metadata={'a"b': "v"}), bad.INVALID_ARGUMENT),
        "empty key": (up(key=""), bad.INVALID_ARGUMENT),
        "empty stream": (lambda: stub.Upsert(iter([]), timeout=10), bad.INVALID_ARGUMENT),
        "NUL delete": (lambda: stub.Delete(pb.DeleteRequest(keys=["\0"]), timeout=10),
                       bad.INVALID_ARGUMENT),
        "reload path": (lambda: stub.Reload(pb.ReloadRequest(version="../../x"), timeout=10),
                        bad.INVALID_ARGUMENT),
        "1 ms search": (lambda: stub.Search(q(k=3), timeout=0.001), late),
        "1 ms upsert": (lambda: stub.Upsert(iter([pb.UpsertRequest(key="h/2", data=img)]),
                                            timeout=0.001), late),
        "1 ms batch": (lambda: stub.BatchSearch(pb.BatchSearchRequest(queries=[q(k=1)] * 8),
                                                timeout=0.001), late),
        "deep job params": (lambda: jobs.Submit(jpb.SubmitJobRequest(
            kind="tsne", params_json="[" * 20_000 + "]" * 20_000), timeout=10),
            bad.INVALID_ARGUMENT),
        "huge job params": (lambda: jobs.Submit(jpb.SubmitJobRequest(
            kind="tsne", params_json=" " * 100_000 + "{}"), timeout=10), bad.INVALID_ARGUMENT),
        "NUL job kind": (lambda: jobs.List(jpb.ListJobsRequest(kind="\0"), timeout=10),
                         bad.INVALID_ARGUMENT),
        "unknown job state": (lambda: jobs.List(jpb.ListJobsRequest(state=99), timeout=10),
                              bad.INVALID_ARGUMENT),
        "1 ms jobs": (lambda: jobs.List(jpb.ListJobsRequest(), timeout=0.001), late),
    }
    answered = {}
    with caplog.at_level(logging.INFO):
        for name, (call, _) in cases.items():
            try:
                call()
                answered[name] = grpc.StatusCode.OK
            except grpc.RpcError as e:
                answered[name] = e.code()
    wrong = {name: code for name, code in answered.items()
             if code not in (cases[name][1] if isinstance(cases[name][1], set)
                             else {cases[name][1]})}
    assert wrong == {}
    time.sleep(0.5)  # calls the client gave up on finish on the server
    internal = {k: v for k, v in counts(server).items() if k[1] in ("INTERNAL", "UNKNOWN")}
    assert internal == {}
    assert server_errors(caplog) == []
    assert stub.DescribeIndex(pb.DescribeIndexRequest(), timeout=10).count > 0  # still serving


class CutOffContext:
    """A servicer context whose client's side has ended the call (as when gRPC refuses an
    oversized message): its request iterator may simply stop, without raising, and the call
    reads as ended only ``active_for`` questions later (the cancellation arrives after)."""

    def __init__(self, active_for: int = 0) -> None:
        self.aborted = None
        self.active_for = active_for

    def is_active(self) -> bool:
        self.active_for -= 1
        return self.active_for >= 0

    def time_remaining(self) -> float:
        return 20.0

    def invocation_metadata(self):
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def abort(self, code, details):
        self.aborted = (code, details)
        raise grpc.RpcError(details)


@pytest.mark.parametrize("active_for", [0, 1], ids=["ended-at-once", "ended-moments-later"])
def test_a_stream_that_stops_because_the_call_ended_is_not_applied(workspace, tiny_checkpoint,
                                                                   digits_dir, active_for):
    core = make_core(workspace, tiny_checkpoint)
    try:
        metrics = Metrics()
        servicer = SimilarityServicer(lambda: core, metrics=metrics)
        count = core.index.index.ntotal
        items = [pb.UpsertRequest(key=f"cut/{i}", data=digit(digits_dir, "2", i).read_bytes())
                 for i in range(3)]
        context = CutOffContext(active_for)
        with pytest.raises(grpc.RpcError):
            servicer.Upsert(iter(items), context)
        assert context.aborted[0] == grpc.StatusCode.CANCELLED
        assert core.index.index.ntotal == count
        assert not (workspace / "idx" / "blobs").exists() or not any(
            p.is_file() for p in (workspace / "idx" / "blobs").rglob("*"))
        with core.sessions() as s:
            assert s.scalars(select(ImageRow.key).where(ImageRow.key.like("cut/%"))).all() == []
        got = {s.labels["code"] for m in metrics.registry.collect() if m.name == "imgsim_requests"
               for s in m.samples if s.name.endswith("_total")}
        assert got == {"CANCELLED"}
    finally:
        core.close()
