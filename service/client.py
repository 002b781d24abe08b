"""A small Python client for SimilarityService (used by the CLI, tests and locust)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

ImageLike = str | bytes | Path


def looks_like_path(image: str | Path) -> bool:
    """A ``Path``, or a string that is anchored (``/x``, ``./x``, ``../x``, ``~/x``) or ends
    in an image file extension. A separator alone is not enough: catalogue keys are
    ``<label>/<name>`` (the image's path below its folder, without extension)."""
    if isinstance(image, Path):
        return True
    from PIL import Image

    p = Path(image)
    return (p.is_absolute() or image.startswith(("./", "../", "~", ".\\", "..\\"))
            or p.suffix.lower() in Image.registered_extensions())


def image_ref(image: ImageLike, *, collection: str = "") -> pb.ImageRef:
    """bytes -> inline image; an existing file path -> its bytes; a directory, or a path that
    names no file (see :func:`looks_like_path`) -> IsADirectoryError or FileNotFoundError,
    saying which path was tried; any other string -> a catalogue key."""
    if isinstance(image, bytes):
        return pb.ImageRef(data=image, collection=collection)
    p = Path(image).expanduser()
    if p.is_file():
        return pb.ImageRef(data=p.read_bytes(), collection=collection)
    tried = f" (tried {p.resolve()})" if str(p.resolve()) != str(image) else ""
    if p.is_dir():
        raise IsADirectoryError(f"{image} is a directory, not an image file{tried}")
    if looks_like_path(image):
        raise FileNotFoundError(f"no such image file: {image}{tried}")
    return pb.ImageRef(key=str(image), collection=collection)


def search_request(query: ImageLike, k: int = 10, *, collection: str = "",
                   labels: Sequence[str] = (), metadata: Mapping[str, str] | None = None,
                   max_distance: float | None = None,
                   exclude_keys: Sequence[str] = ()) -> pb.SearchRequest:
    req = pb.SearchRequest(query=image_ref(query, collection=collection), k=k,
                           collection=collection, labels=list(labels), metadata=metadata or {},
                           exclude_keys=list(exclude_keys))
    if max_distance is not None:
        req.max_distance = max_distance
    return req


@dataclass(frozen=True)
class UpsertImage:
    """One image to upsert: bytes or a file path, under ``key``."""

    key: str
    image: bytes | str | Path
    label: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    collection: str = ""

    def request(self) -> pb.UpsertRequest:
        data = self.image if isinstance(self.image, bytes) else Path(self.image).read_bytes()
        return pb.UpsertRequest(key=self.key, data=data, label=self.label,
                                metadata=dict(self.metadata), collection=self.collection)


class SimilarityClient:
    """``api_key`` is sent as ``authorization: Bearer`` metadata; ``tls_ca`` (PEM bytes or a
    file) or ``tls=True`` (system roots) makes the channel TLS."""

    def __init__(self, target: str, *, timeout: float = 30.0,
                 channel: grpc.Channel | None = None, api_key: str | None = None,
                 tls_ca: bytes | str | Path | None = None, tls: bool = False) -> None:
        opts = [("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20)]
        if channel is None:
            if tls_ca is not None or tls:
                ca = tls_ca if isinstance(tls_ca, bytes | None) else Path(tls_ca).read_bytes()
                channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca), opts)
            else:
                channel = grpc.insecure_channel(target, options=opts)
        self.channel = channel
        self.stub = pb_grpc.SimilarityServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def _kw(self, timeout: float | None = None) -> dict:
        return {"timeout": self.timeout if timeout is None else timeout,
                "metadata": self.metadata}

    def verify(self, a: ImageLike, b: ImageLike | None = None, *,
               threshold: float | None = None, identity: str = "",
               identity_collection: str = "", timeout: float | None = None) -> pb.VerifyResponse:
        """Two images, or (``identity=``) one image against an enrolled identity's images."""
        req = pb.VerifyRequest(a=image_ref(a), identity=identity,
                               identity_collection=identity_collection)
        if b is not None:
            req.b.CopyFrom(image_ref(b))
        if threshold is not None:
            req.threshold = threshold
        return self.stub.Verify(req, **self._kw(timeout))

    def search(self, query: ImageLike, k: int = 10, *, collection: str = "",
               labels: Sequence[str] = (), metadata: Mapping[str, str] | None = None,
               max_distance: float | None = None, exclude_keys: Sequence[str] = (),
               timeout: float | None = None) -> pb.SearchResponse:
        return self.stub.Search(search_request(query, k, collection=collection, labels=labels,
                                               metadata=metadata, max_distance=max_distance,
                                               exclude_keys=exclude_keys), **self._kw(timeout))

    def batch_search(self, queries: Sequence[pb.SearchRequest], *,
                     timeout: float | None = None) -> pb.BatchSearchResponse:
        """``queries`` built with :func:`search_request`."""
        return self.stub.BatchSearch(pb.BatchSearchRequest(queries=list(queries)),
                                     **self._kw(timeout))

    def embed(self, images: Sequence[ImageLike], *, timeout: float | None = None) -> np.ndarray:
        """(n, d) float32 embeddings."""
        r = self.embed_response(images, timeout=timeout)
        return np.array([e.values for e in r.embeddings], np.float32).reshape(-1, r.dimension)

    def embed_response(self, images: Sequence[ImageLike], *,
                       timeout: float | None = None) -> pb.EmbedResponse:
        return self.stub.Embed(pb.EmbedRequest(images=[image_ref(i) for i in images]),
                               **self._kw(timeout))

    def upsert(self, images: Iterable[UpsertImage], *,
               timeout: float | None = None) -> pb.UpsertResponse:
        """Stream the images; all are applied or none."""
        return self.stub.Upsert((im.request() for im in images), **self._kw(timeout))

    def delete(self, keys: Sequence[str], *, collection: str = "", ignore_missing: bool = False,
               timeout: float | None = None) -> pb.DeleteResponse:
        return self.stub.Delete(pb.DeleteRequest(keys=list(keys), collection=collection,
                                                 ignore_missing=ignore_missing),
                                **self._kw(timeout))

    def describe(self, collection: str = "", *,
                 timeout: float | None = None) -> pb.DescribeIndexResponse:
        return self.stub.DescribeIndex(pb.DescribeIndexRequest(collection=collection),
                                       **self._kw(timeout))

    def reload(self, collection: str = "", version: str = "", *,
               timeout: float | None = None) -> pb.ReloadResponse:
        return self.stub.Reload(pb.ReloadRequest(collection=collection, version=version),
                                **self._kw(timeout))

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
