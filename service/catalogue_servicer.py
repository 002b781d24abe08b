"""gRPC adapter of CatalogService: catalogue browsing (service.browse) behind the similarity
service's own keys, error mapping and metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from imgsim.v1 import catalog_pb2 as pb
from imgsim.v1 import catalog_pb2_grpc as pb_grpc
from service.browse import Catalogue, ImageRecord
from service.core import SimilarityCore
from service.servicer import Caller, SimilarityServicer

if TYPE_CHECKING:
    from service.hosting import HostServer

CATALOG_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CatalogService"].full_name


def record_pb(r: ImageRecord) -> pb.ImageRecord:
    return pb.ImageRecord(id=r.id, key=r.key, label=r.label, collection=r.collection,
                          sha256=r.sha256, storage=r.storage, media_type=r.media_type,
                          metadata=r.metadata, created_at=r.created_at, updated_at=r.updated_at)


class CatalogServicer(pb_grpc.CatalogServiceServicer):
    """Reads need a key that may read the collection (as Search does)."""

    def __init__(self, similarity: SimilarityServicer) -> None:
        self._sim = similarity  # its call path: loading check, API key, errors, metrics
        self._catalogues: dict[int, Catalogue] = {}

    def _catalogue(self, core: SimilarityCore) -> Catalogue:
        cat = self._catalogues.get(id(core))
        if cat is None or cat.core is not core:
            self._catalogues = {id(core): (cat := Catalogue(core))}
        return cat

    def _read(self, method: str, context, collection: str | None, fn):
        def run(core: SimilarityCore, c: Caller):
            if collection is not None:
                c.require("read", [collection])
            return fn(self._catalogue(core), c)

        return self._sim._handle(f"CatalogService.{method}", context, run)

    def ListCollections(self, request: pb.ListCollectionsRequest, context):
        def run(cat: Catalogue, c: Caller) -> pb.ListCollectionsResponse:
            cols = cat.collections()
            if c.principal is not None and c.principal.collections is not None:
                cols = [x for x in cols if x.name in c.principal.collections]
            return pb.ListCollectionsResponse(
                collections=[pb.CollectionInfo(**x.__dict__) for x in cols],
                default_collection=cat.core.default_collection)

        return self._read("ListCollections", context, None, run)

    def ListImages(self, request: pb.ListImagesRequest, context):
        def run(cat: Catalogue, _c: Caller) -> pb.ListImagesResponse:
            page = cat.images(request.collection, offset=request.offset, limit=request.limit,
                              labels=tuple(request.labels), metadata=dict(request.metadata),
                              key_prefix=request.key_prefix)
            return pb.ListImagesResponse(images=[record_pb(r) for r in page.images],
                                         total=page.total, offset=page.offset,
                                         has_more=page.next_offset is not None,
                                         next_offset=page.next_offset or 0)

        return self._read("ListImages", context, request.collection, run)

    def GetImage(self, request: pb.GetImageRequest, context):
        return self._read("GetImage", context, request.collection,
                          lambda cat, _c: record_pb(cat.image(request.collection, request.key)))

    def GetThumbnail(self, request: pb.GetThumbnailRequest, context):
        def run(cat: Catalogue, _c: Caller) -> pb.ImageBytes:
            png = cat.thumbnail(request.collection, request.key, request.size or 128)
            return pb.ImageBytes(data=png, media_type="image/png")

        return self._read("GetThumbnail", context, request.collection, run)

    def GetImageBytes(self, request: pb.GetImageRequest, context):
        def run(cat: Catalogue, _c: Caller) -> pb.ImageBytes:
            data, media = cat.image_bytes(request.collection, request.key)
            return pb.ImageBytes(data=data, media_type=media)

        return self._read("GetImageBytes", context, request.collection, run)


def register_catalog_service(grpc_server: grpc.Server, server: HostServer) -> str:
    """The imgsim server's registrar for CatalogService (service.server.SERVICER_REGISTRARS)."""
    sim = SimilarityServicer(lambda: server.core, authenticator=server.authenticator,
                             metrics=server.metrics)
    pb_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(sim), grpc_server)
    return CATALOG_SERVICE_NAME
