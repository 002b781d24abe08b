"""HTTP routes of SimilarityService: search, batch search, verify, embed, upsert, delete,
describe, reload. Each converts JSON or a multipart form into the core's dataclasses, checks the
API key's scope as the gRPC servicer does, and calls the same core."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from service.core import ImageInput, SearchQuery, SearchResult, UpsertItem, VerifyResult
from service.domain import FACE_OUTCOMES
from service.errors import InvalidInput
from service.web import schemas as s
from service.web.context import WebContext


def parse_meta(pairs: list[str] | None) -> dict[str, str]:
    """``["name=value", ...]`` (form fields and query parameters) -> a dict."""
    out = {}
    for p in pairs or []:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise InvalidInput(f"metadata filter must be NAME=VALUE, got {p[:60]!r}")
        out[name] = value
    return out


def search_out(r: SearchResult) -> dict:
    return {"hits": [{"key": h.key, "label": h.label, "distance": h.distance, "rank": h.rank,
                      "similarity": h.similarity, "metadata": h.metadata} for h in r.hits],
            "index_version": r.index_version, "model_version": r.model_version,
            "query_face": FACE_OUTCOMES[r.query_face]}


def verify_out(r: VerifyResult) -> dict:
    return {"same": r.same, "distance": r.distance, "similarity": r.similarity,
            "threshold": r.threshold, "model_version": r.model_version,
            "enrolled_images": r.enrolled_images, "mean_distance": r.mean_distance,
            "nearest_key": r.nearest_key, "index_version": r.index_version,
            "face_a": FACE_OUTCOMES[r.face_a], "face_b": FACE_OUTCOMES[r.face_b]}


def form_image(upload: UploadFile | None, key: str, collection: str) -> ImageInput:
    """A multipart image: an uploaded file or a catalogue key (a blank file field is none)."""
    data = upload.file.read() if upload is not None else None
    if data is not None and not data and not upload.filename:
        data = None  # a form's empty file input
    return ImageInput(data=data, key=key or None, collection=collection)


def run_search(ctx: WebContext, request: Request,
               queries: list[SearchQuery]) -> list[SearchResult]:
    """Search and batch search, both doors (the FastAPI routes and ``SearchEndpoint``)."""
    core, c = ctx.caller(request)
    c.read_refs(*(q.query for q in queries))
    c.require("read", [q.collection for q in queries])
    names = ["query"] if len(queries) == 1 else None
    return core.batch_search(queries, deadline=c.deadline, names=names)


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["similarity"])

    def verify_inputs(request: Request, a: ImageInput, b: ImageInput | None,
                      threshold: float | None, identity: str, identity_collection: str) -> dict:
        core, c = ctx.caller(request)
        if identity:
            if b is not None:
                raise InvalidInput("give b or identity, not both")
            c.read_refs(a)
            c.require("read", [identity_collection])
            res = core.verify_identity(a, identity, collection=identity_collection,
                                       threshold=threshold, deadline=c.deadline)
        else:
            b = b or ImageInput()
            c.read_refs(a, b)
            c.require("read")
            res = core.verify(a, b, threshold=threshold, deadline=c.deadline)
        return verify_out(res)

    # served by service.web.search_route.SearchEndpoint in the full app (the same answers,
    # less CPU); this route documents the form and serves the FastAPI app on its own
    @r.post("/search", response_model=s.SearchOut, summary="Search by an uploaded image or a key",
            description="A multipart (or urlencoded) form; or the image itself as the body "
                        "(`Content-Type: image/png`, `image/jpeg`, ...), with the other fields "
                        "as query parameters (`?k=5&label=3`).",
            openapi_extra={"requestBody": {"content": {"image/*": {"schema": {
                "type": "string", "format": "binary"}}}}})
    def search(request: Request,
               image: Annotated[UploadFile | None, File(description="query image")] = None,
               key: Annotated[str, Form(description="or: key of a catalogued query")] = "",
               query_collection: Annotated[str, Form(description="collection of `key` "
                                                                 "(default: `collection`)")] = "",
               collection: Annotated[str, Form(description="collection searched")] = "",
               k: Annotated[int, Form()] = 10,
               label: Annotated[list[str] | None, Form(description="only these labels")] = None,
               meta: Annotated[list[str] | None, Form(description="NAME=VALUE, every one")] = None,
               max_distance: Annotated[float | None, Form()] = None,
               exclude_key: Annotated[list[str] | None, Form()] = None) -> dict:
        q = SearchQuery(form_image(image, key, query_collection or collection), k, collection,
                        tuple(label or ()), parse_meta(meta), max_distance,
                        tuple(exclude_key or ()))
        return search_out(run_search(ctx, request, [q])[0])

    @r.post("/search/batch", response_model=s.BatchSearchOut, summary="Several searches")
    def batch_search(request: Request, body: s.BatchSearchIn) -> dict:
        qs = [SearchQuery(q.query.input(f"query {i}"), q.k, q.collection, tuple(q.labels),
                          dict(q.metadata), q.max_distance, tuple(q.exclude_keys))
              for i, q in enumerate(body.queries)]
        return {"results": [search_out(x) for x in run_search(ctx, request, qs)]}

    @r.post("/verify", response_model=s.VerifyOut,
            summary="Two uploaded images (or keys), or one against an enrolled identity")
    def verify(request: Request,
               a: Annotated[UploadFile | None, File()] = None,
               b: Annotated[UploadFile | None, File()] = None,
               a_key: Annotated[str, Form()] = "", b_key: Annotated[str, Form()] = "",
               collection: Annotated[str, Form(description="collection of the keys")] = "",
               identity: Annotated[str, Form(description="a label: verify a against its "
                                                         "enrolled images")] = "",
               identity_collection: Annotated[str, Form()] = "",
               threshold: Annotated[float | None, Form()] = None) -> dict:
        ia = form_image(a, a_key, collection)
        ib = form_image(b, b_key, collection)
        has_b = ib.data is not None or ib.key is not None
        return verify_inputs(request, ia, ib if has_b else None, threshold, identity,
                             identity_collection)

    @r.post("/verify/json", response_model=s.VerifyOut, summary="Verify, JSON body")
    def verify_json(request: Request, body: s.VerifyIn) -> dict:
        return verify_inputs(request, body.a.input("image a"),
                             body.b.input("image b") if body.b is not None else None,
                             body.threshold, body.identity, body.identity_collection)

    @r.post("/embed", response_model=s.EmbedOut, summary="Images -> embedding vectors")
    def embed(request: Request, body: s.EmbedIn) -> dict:
        core, c = ctx.caller(request)
        images = [im.input(f"image {i}") for i, im in enumerate(body.images)]
        c.read_refs(*images)
        c.require("read")
        got = core.embed_faces(images, deadline=c.deadline)
        return {"embeddings": got.vectors.tolist(),
                "faces": [FACE_OUTCOMES[f] for f in got.faces],
                "dimension": core.embedder.dim,
                "metric": core.embedder.spec.metric,
                "model_version": core.embedder.model_version}

    def apply_upsert(request: Request, items: list[UpsertItem]) -> dict:
        core, c = ctx.caller(request)
        for it in items:
            c.require("write", [it.collection])
        res = core.upsert(items, deadline=c.deadline)
        return {"inserted": res.inserted, "updated": res.updated, "unchanged": res.unchanged,
                "index_version": res.index_version, "count": res.count}

    @r.post("/upsert", response_model=s.UpsertOut,
            summary="Add or replace uploaded images (idempotent by key; all or nothing)")
    def upsert(request: Request,
               images: Annotated[list[UploadFile], File(description="the images")],
               key: Annotated[list[str] | None, Form(description="one per image (default: "
                                                                 "the file name's stem)")] = None,
               label: Annotated[list[str] | None, Form(description="one for all, or one per "
                                                                   "image")] = None,
               meta: Annotated[list[str] | None, Form(description="NAME=VALUE, for every "
                                                                  "image")] = None,
               collection: Annotated[str, Form()] = "") -> dict:
        keys, labels = key or [], label or []
        if keys and len(keys) != len(images):
            raise InvalidInput(f"{len(keys)} keys for {len(images)} images")
        if len(labels) > 1 and len(labels) != len(images):
            raise InvalidInput(f"{len(labels)} labels for {len(images)} images (give one for "
                               "all, or one each)")
        metadata = parse_meta(meta)
        items = []
        for i, f in enumerate(images):
            k = keys[i] if keys else (f.filename or "").rsplit("/", 1)[-1].rsplit(".", 1)[0]
            lab = labels[i] if len(labels) > 1 else (labels[0] if labels else "")
            items.append(UpsertItem(k, f.file.read(), lab, metadata, collection))
        return apply_upsert(request, items)

    @r.post("/upsert/json", response_model=s.UpsertOut, summary="Upsert, JSON body (base64)")
    def upsert_json(request: Request, body: s.UpsertIn) -> dict:
        items = []
        for i, it in enumerate(body.items):
            data = s.ImageRef(data=it.data).input(f"item {i}").data
            items.append(UpsertItem(it.key, data, it.label, dict(it.metadata), it.collection))
        return apply_upsert(request, items)

    @r.post("/delete", response_model=s.DeleteOut, summary="Remove images by key")
    def delete(request: Request, body: s.DeleteIn) -> dict:
        core, c = ctx.caller(request)
        c.require("write", [body.collection])
        res = core.delete(list(body.keys), collection=body.collection,
                          ignore_missing=body.ignore_missing)
        return {"deleted": res.deleted, "missing": list(res.missing),
                "index_version": res.index_version, "count": res.count}

    @r.get("/index", response_model=s.IndexOut, summary="What is served: model, version, recall")
    def describe(request: Request, collection: str = "") -> dict:
        core, c = ctx.caller(request)
        c.require("read", [collection])
        i = core.describe(collection)
        return {"collection": i.collection, "model_version": i.model_version,
                "index_version": i.index_version, "factory": i.factory, "metric": i.metric,
                "dimension": i.dimension, "count": i.count, "recall_at_10": i.recall_at_10,
                "threshold": i.threshold, "checkpoint_sha256": i.checkpoint_sha256,
                "created_at": i.created_at,
                "search_params": {k: str(v) for k, v in i.search_params.items()},
                "face": i.face, "collections": list(i.collections)}

    @r.post("/reload", response_model=s.ReloadOut, summary="Swap to another published version")
    def reload(request: Request, body: s.ReloadIn) -> dict:
        core, c = ctx.caller(request)
        c.require("write", [body.collection])
        coll, old, new = core.reload(body.collection, body.version or None)
        return {"collection": coll, "previous_version": old, "index_version": new}

    return r
