"""A small Python client for SimilarityService (used by the CLI, tests and locust)."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc


def image_ref(image: str | bytes | Path, *, collection: str = "") -> pb.ImageRef:
    """bytes -> inline image; an existing file path -> its bytes; any other string -> a key."""
    if isinstance(image, bytes):
        return pb.ImageRef(data=image, collection=collection)
    p = Path(image)
    if p.is_file():
        return pb.ImageRef(data=p.read_bytes(), collection=collection)
    return pb.ImageRef(key=str(image), collection=collection)


class SimilarityClient:
    def __init__(self, target: str, *, timeout: float = 30.0,
                 channel: grpc.Channel | None = None) -> None:
        self.channel = channel or grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", 64 << 20),
                             ("grpc.max_receive_message_length", 64 << 20)])
        self.stub = pb_grpc.SimilarityServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout

    def verify(self, a, b, *, threshold: float | None = None) -> pb.VerifyResponse:
        req = pb.VerifyRequest(a=image_ref(a), b=image_ref(b))
        if threshold is not None:
            req.threshold = threshold
        return self.stub.Verify(req, timeout=self.timeout)

    def search(self, query, k: int = 10, *, collection: str = "") -> pb.SearchResponse:
        return self.stub.Search(pb.SearchRequest(query=image_ref(query), k=k, collection=collection),
                                timeout=self.timeout)

    def health(self, service: str = "") -> str:
        r = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service),
                                   timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SimilarityClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
