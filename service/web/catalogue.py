"""HTTP routes of catalogue browsing: collections, pages of images, records, thumbnails, bytes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.browse import DEFAULT_PAGE, DEFAULT_THUMBNAIL, ImageRecord
from service.web import schemas as s
from service.web.context import WebContext
from service.web.similarity import parse_meta


def record_out(r: ImageRecord) -> dict:
    return dict(r.__dict__)


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["catalogue"])

    def reader(request: Request, collection: str):
        core, c = ctx.caller(request)
        c.require("read", [collection])
        return ctx.catalogue(core)

    @r.get("/collections", response_model=s.CollectionsOut,
           summary="Collections with their image counts and served index versions")
    def collections(request: Request) -> dict:
        core, c = ctx.caller(request)
        cols = ctx.catalogue(core).collections()
        if c.principal is not None and c.principal.collections is not None:
            cols = [x for x in cols if x.name in c.principal.collections]
        return {"collections": [dict(x.__dict__) for x in cols],
                "default_collection": core.default_collection}

    @r.get("/collections/{collection}/images", response_model=s.ImagePageOut,
           summary="A page of a collection's images, filtered by label and metadata")
    def images(request: Request, collection: str, offset: int = 0, limit: int = DEFAULT_PAGE,
               label: Annotated[list[str] | None, Query()] = None,
               meta: Annotated[list[str] | None, Query(description="NAME=VALUE")] = None,
               key_prefix: str = "") -> dict:
        page = reader(request, collection).images(
            collection, offset=offset, limit=limit, labels=tuple(label or ()),
            metadata=parse_meta(meta), key_prefix=key_prefix)
        return {"images": [record_out(x) for x in page.images], "total": page.total,
                "offset": page.offset, "next_offset": page.next_offset}

    @r.get("/collections/{collection}/image", response_model=s.ImageRecordOut,
           summary="One image's catalogue record")
    def image(request: Request, collection: str, key: str) -> dict:
        return record_out(reader(request, collection).image(collection, key))

    @r.get("/collections/{collection}/thumbnail", summary="A PNG thumbnail of one image",
           response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def thumbnail(request: Request, collection: str, key: str,
                  size: int = DEFAULT_THUMBNAIL) -> Response:
        png = reader(request, collection).thumbnail(collection, key, size)
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=60"})

    @r.get("/collections/{collection}/bytes", summary="One image's encoded bytes",
           response_class=Response)
    def image_bytes(request: Request, collection: str, key: str) -> Response:
        data, media = reader(request, collection).image_bytes(collection, key)
        return Response(data, media_type=media, headers={"X-Content-Type-Options": "nosniff"})

    return r
