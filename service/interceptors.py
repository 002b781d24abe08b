"""Server interceptors: a request that does not parse is the client's error, not the server's."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from imgsim.v1 import similarity_pb2 as pb
from service.errors import InvalidInput
from service.metrics import Metrics
from service.servicer import RpcCall

log = logging.getLogger(__name__)

SIMILARITY = pb.DESCRIPTOR.services_by_name["SimilarityService"].full_name
PACKAGE = "/" + pb.DESCRIPTOR.package + "."  # only this project's services are wrapped


class Malformed:
    """Stands for a request message that did not parse; the handler answers INVALID_ARGUMENT."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def invalid(self, what: str) -> InvalidInput:
        return InvalidInput(f"{what} is not a valid message of this RPC: {self.error}")


def method_label(full_method: str) -> str:
    """The metrics' method name: ``Search`` for the similarity service (as its servicer
    counts it), ``<Service>.<Method>`` for the others, e.g. ``JobService.Submit``."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    if service == SIMILARITY:
        return method
    return f"{service.rpartition('.')[2]}.{method}"


class MalformedRequests(grpc.ServerInterceptor):
    """Bad bytes in a request (a string field that is not UTF-8, a truncated message) make
    gRPC answer INTERNAL "Exception deserializing request!" and log a traceback, before any
    servicer runs. This parses the request itself and lets the handler answer
    INVALID_ARGUMENT, logged as a warning and counted like any other client's error."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if (handler is None or handler.request_deserializer is None
                or not handler_call_details.method.startswith(PACKAGE)):
            return handler
        parse = handler.request_deserializer
        label = method_label(handler_call_details.method)

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as e:  # the client's bytes: answered by the handler, below
                return Malformed(e)

        def refuse(malformed: Malformed, context: grpc.ServicerContext):
            def raise_invalid():
                raise malformed.invalid("the request")

            return RpcCall(label, context, self.metrics).run(raise_invalid)

        def checked(requests: Iterator[Any]) -> Iterator[Any]:
            for n, r in enumerate(requests):
                if isinstance(r, Malformed):
                    raise r.invalid(f"message {n} of the stream")
                yield r

        def unary(behaviour: Callable) -> Callable:
            def run(request, context):
                if isinstance(request, Malformed):
                    return refuse(request, context)
                return behaviour(request, context)

            return run

        def streaming(behaviour: Callable) -> Callable:
            return lambda requests, context: behaviour(checked(requests), context)

        out = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary(handler.unary_unary), request_deserializer=tolerant, response_serializer=out)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                unary(handler.unary_stream), request_deserializer=tolerant, response_serializer=out)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                streaming(handler.stream_unary), request_deserializer=tolerant,
                response_serializer=out)
        return grpc.stream_stream_rpc_method_handler(
            streaming(handler.stream_stream), request_deserializer=tolerant,
            response_serializer=out)
