"""gRPC adapter: protobuf <-> core dataclasses, API keys, domain errors -> status codes, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc
from service.auth import Authenticator, Principal, key_from_metadata
from service.core import (
    ImageInput,
    SearchQuery,
    SearchResult,
    SimilarityCore,
    UpsertItem,
    VerifyResult,
)
from service.domain import FACE_OUTCOMES
from service.errors import (
    ClientGone,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from service.metrics import Metrics

log = logging.getLogger(__name__)

STATUS_OF = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

Handler = Callable[[SimilarityCore, "Caller"], Any]


def image_input(ref: pb.ImageRef) -> ImageInput:
    which = ref.WhichOneof("source")
    if which == "data":
        return ImageInput(data=ref.data, collection=ref.collection)
    if which == "key":
        return ImageInput(key=ref.key, collection=ref.collection)
    return ImageInput(collection=ref.collection)


def search_query(r: pb.SearchRequest) -> SearchQuery:
    return SearchQuery(image_input(r.query), r.k, r.collection, tuple(r.labels), dict(r.metadata),
                       r.max_distance if r.HasField("max_distance") else None,
                       tuple(r.exclude_keys))


def face_outcome(found: bool | None) -> int:
    """The face step's outcome (see service.images.Embedded) as a pb.FaceOutcome."""
    return pb.FaceOutcome.Value(FACE_OUTCOMES[found])


def search_response(r: SearchResult) -> pb.SearchResponse:
    return pb.SearchResponse(
        hits=[pb.SearchHit(key=h.key, label=h.label, distance=h.distance, rank=h.rank,
                           similarity=h.similarity, metadata=h.metadata) for h in r.hits],
        index_version=r.index_version, model_version=r.model_version,
        query_face=face_outcome(r.query_face))


def verify_response(r: VerifyResult) -> pb.VerifyResponse:
    return pb.VerifyResponse(same=r.same, distance=r.distance, similarity=r.similarity,
                             threshold=r.threshold, model_version=r.model_version,
                             enrolled_images=r.enrolled_images, mean_distance=r.mean_distance,
                             nearest_key=r.nearest_key, index_version=r.index_version,
                             face_a=face_outcome(r.face_a), face_b=face_outcome(r.face_b))


class Caller:
    """Who calls (None when API keys are off) and until when (monotonic deadline)."""

    def __init__(self, core: SimilarityCore, principal: Principal | None,
                 deadline: float | None) -> None:
        self.core, self.principal, self.deadline = core, principal, deadline

    def require(self, access: str, collections: Iterable[str] = ()) -> None:
        if self.principal is not None:
            self.principal.require(access, {self.core.collection_name(c) for c in collections})

    def read_refs(self, *refs: ImageInput) -> None:
        """Images given by key are read from their collection."""
        self.require("read", [r.collection for r in refs if r.key])


# A deadline further than this is no deadline: a call without one reports a time remaining of
# about 2**63 ns, past what a lock or a future can wait for (OverflowError).
NO_DEADLINE_SECONDS = 365 * 24 * 3600.0
INTERNAL_MESSAGE = "internal error (details in the server log)"


def call_deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline on ``time.monotonic()``'s clock; None when it has none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE_SECONDS:
        return None
    return time.monotonic() + remaining


def ended_by_client(context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str]:
    """The status of a call the client's side ended: past its deadline, or cancelled. gRPC
    also ends a request stream this way when a message is over the server's size limit (the
    client then reads RESOURCE_EXHAUSTED, the server only that the stream was cancelled)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call was done"
    return grpc.StatusCode.CANCELLED, ("the client's side ended the call: cancelled, or a "
                                       "message over the server's size limit")


class RpcCall:
    """One RPC's outcome: the status code of its error, its log line and its metrics.

    A client's error (a bad argument, an unknown key, a deadline, a cancelled or oversized
    stream) is logged as a warning and counted under its own code; only a fault of the server
    answers INTERNAL and is logged as an error with its traceback, so that alerts on INTERNAL
    mean a fault."""

    def __init__(self, method: str, context: grpc.ServicerContext,
                 metrics: Metrics | None) -> None:
        self.method, self.context, self.metrics = method, context, metrics
        self.principal: Principal | None = None

    def run(self, fn: Callable[[], Any]):
        """``fn()``'s result, or the abort of the call with the status of its error."""
        t0 = time.perf_counter()
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            result = fn()
        except ClientGone:
            code, msg = ended_by_client(self.context)
        except ServiceError as e:
            code, msg = STATUS_OF.get(type(e), grpc.StatusCode.INTERNAL), str(e)
        except grpc.RpcError:  # raised by a request stream the client's side ended
            code, msg = ended_by_client(self.context)
        except Exception:
            log.exception("%s failed", self.method, extra={"method": self.method})
            code, msg = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
        else:
            code, msg = grpc.StatusCode.OK, ""
            if not self.context.is_active():  # answered after the client gave up on it
                code, msg = ended_by_client(self.context)
            self._done(code, t0, msg)
            return result
        self._done(code, t0, msg)
        self.context.abort(code, msg)

    def _done(self, code: grpc.StatusCode, t0: float, msg: str) -> None:
        seconds = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.in_flight.dec()
            self.metrics.observe(self.method, code.name, seconds)
        level = logging.DEBUG if code == grpc.StatusCode.OK else (
            logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.WARNING)
        if log.isEnabledFor(level):
            log.log(level, "%s %s %.1fms %s", self.method, code.name, seconds * 1e3, msg,
                    extra={"method": self.method, "code": code.name,
                           "ms": round(seconds * 1e3, 2), "peer": self.context.peer(),
                           "key_id": self.principal.key_id if self.principal else None})


class SimilarityServicer(pb_grpc.SimilarityServiceServicer):
    def __init__(self, core_provider: Callable[[], SimilarityCore | None], *,
                 authenticator: Authenticator | None = None,
                 metrics: Metrics | None = None) -> None:
        self._core = core_provider
        self.auth = authenticator
        self.metrics = metrics

    def _handle(self, method: str, context: grpc.ServicerContext, fn: Handler):
        """Authenticate, run, map errors to status codes, record metrics; never raises
        anything but the abort of a failed call."""
        call = RpcCall(method, context, self.metrics)

        def run():
            core = self._core()
            if core is None:
                raise Unavailable("model and index are still loading")
            if self.auth is not None:
                call.principal = self.auth.authenticate(
                    key_from_metadata(context.invocation_metadata()))
            return fn(core, Caller(core, call.principal, call_deadline(context)))

        return call.run(run)

    # -- RPCs -----------------------------------------------------------------------------
    def Verify(self, request: pb.VerifyRequest, context) -> pb.VerifyResponse:
        thr = request.threshold if request.HasField("threshold") else None

        def run(core: SimilarityCore, c: Caller) -> pb.VerifyResponse:
            a = image_input(request.a)
            if request.identity:
                if request.HasField("b"):
                    raise InvalidInput("give b or identity, not both")
                c.read_refs(a)
                c.require("read", [request.identity_collection])
                r = core.verify_identity(a, request.identity,
                                         collection=request.identity_collection, threshold=thr,
                                         deadline=c.deadline)
            else:
                b = image_input(request.b)
                c.read_refs(a, b)
                c.require("read")
                r = core.verify(a, b, threshold=thr, deadline=c.deadline)
            return verify_response(r)

        return self._handle("Verify", context, run)

    def Search(self, request: pb.SearchRequest, context) -> pb.SearchResponse:
        def run(core: SimilarityCore, c: Caller) -> pb.SearchResponse:
            q = search_query(request)
            c.read_refs(q.query)
            c.require("read", [q.collection])
            return search_response(core.batch_search([q], deadline=c.deadline,
                                                     names=["query"])[0])

        return self._handle("Search", context, run)

    def BatchSearch(self, request: pb.BatchSearchRequest, context) -> pb.BatchSearchResponse:
        def run(core: SimilarityCore, c: Caller) -> pb.BatchSearchResponse:
            qs = [search_query(r) for r in request.queries]
            c.read_refs(*(q.query for q in qs))
            c.require("read", [q.collection for q in qs])
            results = core.batch_search(qs, deadline=c.deadline)
            return pb.BatchSearchResponse(results=[search_response(r) for r in results])

        return self._handle("BatchSearch", context, run)

    def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        def run(core: SimilarityCore, c: Caller) -> pb.EmbedResponse:
            images = [image_input(r) for r in request.images]
            c.read_refs(*images)
            c.require("read")
            got = core.embed_faces(images, deadline=c.deadline)
            return pb.EmbedResponse(embeddings=[pb.Embedding(values=v, face=face_outcome(f))
                                                for v, f in zip(got.vectors, got.faces,
                                                                strict=True)],
                                    dimension=core.embedder.dim, metric=core.embedder.spec.metric,
                                    model_version=core.embedder.model_version)

        return self._handle("Embed", context, run)

    def Upsert(self, request_iterator: Iterator[pb.UpsertRequest], context) -> pb.UpsertResponse:
        def run(core: SimilarityCore, c: Caller) -> pb.UpsertResponse:
            def items() -> Iterator[UpsertItem]:
                for r in request_iterator:
                    c.require("write", [r.collection])
                    yield UpsertItem(r.key, r.data, r.label, dict(r.metadata), r.collection)
                # gRPC may end the iteration, not raise, when the client's side ended the call
                # (cancelled, a message over the size limit): what came so far is not the stream
                if not context.is_active():
                    raise grpc.RpcError("the request stream was cut off")

            r = core.upsert(items(), deadline=c.deadline,
                            abandoned=lambda: not context.is_active())
            return pb.UpsertResponse(inserted=r.inserted, updated=r.updated, unchanged=r.unchanged,
                                     index_version=r.index_version, count=r.count)

        return self._handle("Upsert", context, run)

    def Delete(self, request: pb.DeleteRequest, context) -> pb.DeleteResponse:
        def run(core: SimilarityCore, c: Caller) -> pb.DeleteResponse:
            c.require("write", [request.collection])
            r = core.delete(list(request.keys), collection=request.collection,
                            ignore_missing=request.ignore_missing)
            return pb.DeleteResponse(deleted=r.deleted, missing=r.missing,
                                     index_version=r.index_version, count=r.count)

        return self._handle("Delete", context, run)

    def DescribeIndex(self, request: pb.DescribeIndexRequest, context) -> pb.DescribeIndexResponse:
        def run(core: SimilarityCore, c: Caller) -> pb.DescribeIndexResponse:
            c.require("read", [request.collection])
            i = core.describe(request.collection)
            out = pb.DescribeIndexResponse(
                collection=i.collection, model_version=i.model_version,
                index_version=i.index_version, factory=i.factory, metric=i.metric,
                dimension=i.dimension, count=i.count, threshold=i.threshold,
                checkpoint_sha256=i.checkpoint_sha256, created_at=i.created_at,
                search_params={k: str(v) for k, v in i.search_params.items()}, face=i.face,
                collections=list(i.collections))
            if i.recall_at_10 is not None:
                out.recall_at_10 = i.recall_at_10
            return out

        return self._handle("DescribeIndex", context, run)

    def Reload(self, request: pb.ReloadRequest, context) -> pb.ReloadResponse:
        def run(core: SimilarityCore, c: Caller) -> pb.ReloadResponse:
            c.require("write", [request.collection])
            coll, old, new = core.reload(request.collection, request.version or None)
            return pb.ReloadResponse(collection=coll, previous_version=old, index_version=new)

        return self._handle("Reload", context, run)
