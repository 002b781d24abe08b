"""JSON shapes of the HTTP API (pydantic, so that the OpenAPI schema describes them).

Field names are those of the imgsim.v1 protobuf messages; images travel as base64 in JSON
bodies and as files in multipart forms."""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, Field

from service.core import ImageInput
from service.errors import InvalidInput

FACE_DOC = ("for face models, what the face step did with the inline image: "
             "FACE_OUTCOME_FOUND, FACE_OUTCOME_NOT_FOUND (no face: the checkpoint's fallback "
             "crop was embedded, a weaker answer), FACE_OUTCOME_UNSPECIFIED (no face step, "
             "or an image given by key)")


class ImageRef(BaseModel):
    """An image inline (base64 of the encoded file) or by catalogue key."""

    data: str | None = Field(None, description="base64 of an encoded image (JPEG, PNG, ...)")
    key: str | None = Field(None, description="key of a catalogued image")
    collection: str = Field("", description="collection of `key` (empty: the default one)")

    def input(self, name: str = "image") -> ImageInput:
        if self.data is None:
            return ImageInput(key=self.key, collection=self.collection)
        try:
            data = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{name}: data is not valid base64") from None
        return ImageInput(data=data, key=self.key, collection=self.collection)


class SearchQueryIn(BaseModel):
    query: ImageRef
    k: int = Field(10, description="hits, 1..server max")
    collection: str = ""
    labels: list[str] = []
    metadata: dict[str, str] = {}
    max_distance: float | None = None
    exclude_keys: list[str] = []


class BatchSearchIn(BaseModel):
    queries: list[SearchQueryIn]


class SearchHitOut(BaseModel):
    key: str
    label: str
    distance: float = Field(description="Euclidean distance to the query")
    rank: int
    similarity: float = Field(description="cosine similarity to the query")
    metadata: dict[str, str]


class SearchOut(BaseModel):
    hits: list[SearchHitOut]
    index_version: str
    model_version: str
    query_face: str = Field("FACE_OUTCOME_UNSPECIFIED", description=FACE_DOC)


class BatchSearchOut(BaseModel):
    results: list[SearchOut]


class VerifyIn(BaseModel):
    a: ImageRef
    b: ImageRef | None = None
    threshold: float | None = None
    identity: str = ""
    identity_collection: str = ""


class VerifyOut(BaseModel):
    same: bool
    distance: float
    similarity: float
    threshold: float
    model_version: str
    enrolled_images: int = 0
    mean_distance: float = 0.0
    nearest_key: str = ""
    index_version: str = ""
    face_a: str = Field("FACE_OUTCOME_UNSPECIFIED", description=FACE_DOC)
    face_b: str = Field("FACE_OUTCOME_UNSPECIFIED", description=FACE_DOC)


class EmbedIn(BaseModel):
    images: list[ImageRef]


class EmbedOut(BaseModel):
    embeddings: list[list[float]]
    faces: list[str] = Field([], description="one per image; " + FACE_DOC)
    dimension: int
    metric: str
    model_version: str


class UpsertItemIn(BaseModel):
    key: str
    data: str = Field(description="base64 of the encoded image")
    label: str = ""
    metadata: dict[str, str] = {}
    collection: str = ""


class UpsertIn(BaseModel):
    items: list[UpsertItemIn]


class UpsertOut(BaseModel):
    inserted: int
    updated: int
    unchanged: int
    index_version: str
    count: int


class DeleteIn(BaseModel):
    keys: list[str]
    collection: str = ""
    ignore_missing: bool = False


class DeleteOut(BaseModel):
    deleted: int
    missing: list[str]
    index_version: str
    count: int


class IndexOut(BaseModel):
    collection: str
    model_version: str
    index_version: str
    factory: str
    metric: str
    dimension: int
    count: int
    recall_at_10: float | None
    threshold: float
    checkpoint_sha256: str
    created_at: str
    search_params: dict[str, str]
    face: str
    collections: list[str]


class ReloadIn(BaseModel):
    collection: str = ""
    version: str = ""


class ReloadOut(BaseModel):
    collection: str
    previous_version: str
    index_version: str


class CollectionOut(BaseModel):
    name: str
    count: int
    served: bool
    index_version: str
    indexed: int
    description: str


class CollectionsOut(BaseModel):
    collections: list[CollectionOut]
    default_collection: str


class ImageRecordOut(BaseModel):
    id: int
    key: str
    label: str
    collection: str
    sha256: str
    storage: str
    media_type: str
    metadata: dict[str, str]
    created_at: str
    updated_at: str


class ImagePageOut(BaseModel):
    images: list[ImageRecordOut]
    total: int
    offset: int
    next_offset: int | None


class JobArtifactOut(BaseModel):
    name: str
    path: str
    media_type: str
    caption: str
    url: str = Field(description="where this API serves the file")


class JobOut(BaseModel):
    id: int
    kind: str
    state: str
    progress: float
    message: str
    params: dict
    error: str
    cancel_requested: bool
    artifacts: list[JobArtifactOut]
    created_at: str
    started_at: str
    finished_at: str


class JobsOut(BaseModel):
    jobs: list[JobOut]


class SubmitJobIn(BaseModel):
    kind: str
    params: dict = {}


class JobParamOut(BaseModel):
    name: str
    type: str
    required: bool
    default: object | None = None
    help: str = ""


class JobKindOut(BaseModel):
    name: str
    help: str
    params: list[JobParamOut]


class JobKindsOut(BaseModel):
    kinds: list[JobKindOut]


class JobInputOut(BaseModel):
    path: str = Field(description="server path of the stored image, for a job's parameters")
    sha256: str
    bytes: int


class InfoOut(BaseModel):
    serving: bool
    require_api_key: bool
    grpc_port: int
    model_version: str
    default_collection: str
    jobs: bool
    max_body_bytes: int
