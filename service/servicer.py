"""gRPC adapter: protobuf <-> core dataclasses, domain errors -> status codes."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc
from service.core import (
    FailedPrecondition,
    ImageInput,
    InvalidInput,
    NotFound,
    ServiceError,
    SimilarityCore,
)

log = logging.getLogger(__name__)

STATUS_OF = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}


def image_input(ref: pb.ImageRef) -> ImageInput:
    which = ref.WhichOneof("source")
    if which == "data":
        return ImageInput(data=ref.data, collection=ref.collection)
    if which == "key":
        return ImageInput(key=ref.key, collection=ref.collection)
    return ImageInput(collection=ref.collection)


class SimilarityServicer(pb_grpc.SimilarityServiceServicer):
    def __init__(self, core_provider: Callable[[], SimilarityCore | None]) -> None:
        self._core = core_provider

    def _call(self, context: grpc.ServicerContext, fn):
        core = self._core()
        if core is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "model and index are still loading")
        try:
            return fn(core)
        except ServiceError as e:
            context.abort(STATUS_OF.get(type(e), grpc.StatusCode.INTERNAL), str(e))

    def Verify(self, request: pb.VerifyRequest, context) -> pb.VerifyResponse:
        thr = request.threshold if request.HasField("threshold") else None
        r = self._call(context, lambda c: c.verify(image_input(request.a), image_input(request.b),
                                                   threshold=thr))
        return pb.VerifyResponse(same=r.same, distance=r.distance, similarity=r.similarity,
                                 threshold=r.threshold, model_version=r.model_version)

    def Search(self, request: pb.SearchRequest, context) -> pb.SearchResponse:
        r = self._call(context, lambda c: c.search(image_input(request.query), request.k,
                                                   collection=request.collection))
        return pb.SearchResponse(
            hits=[pb.SearchHit(key=h.key, label=h.label, distance=h.distance, rank=h.rank,
                               similarity=h.similarity) for h in r.hits],
            index_version=r.index_version, model_version=r.model_version)
