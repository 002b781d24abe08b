"""Verify: are two images the same (distance against the calibrated threshold), or is an image
one of an identity's enrolled images."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from service.collection_registry import CollectionRegistry
from service.domain import ImageInput, VerifyResult
from service.embedding_front import EmbeddingFront
from service.errors import InvalidInput, NotFound
from service.store import identity_entries
from service.validation import check_label


def cosine_from_vectors(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


class Verifier:
    """``threshold``: the distance at or under which two images are the same (the model's
    calibrated one, or the configured fallback)."""

    def __init__(self, front: EmbeddingFront, collections: CollectionRegistry,
                 sessions: sessionmaker[Session], *, threshold: float) -> None:
        self._front, self._collections, self._sessions = front, collections, sessions
        self.threshold = threshold

    def _threshold(self, threshold: float | None) -> float:
        thr = self.threshold if threshold is None else float(threshold)
        if not np.isfinite(thr) or thr < 0:
            raise InvalidInput(f"threshold must be a non-negative number, got {thr}")
        return thr

    def verify(self, a: ImageInput, b: ImageInput, *, threshold: float | None = None,
               deadline: float | None = None) -> VerifyResult:
        thr = self._threshold(threshold)
        got = self._front.vectors_and_faces([a, b], deadline=deadline,
                                            names=["image a", "image b"])
        va, vb = got.vectors
        d = float(np.linalg.norm(va - vb))
        return VerifyResult(d <= thr, d, cosine_from_vectors(va, vb), thr,
                            self._front.embedder.model_version, face_a=got.faces[0],
                            face_b=got.faces[1])

    def verify_identity(self, image: ImageInput, identity: str, *, collection: str = "",
                        threshold: float | None = None,
                        deadline: float | None = None) -> VerifyResult:
        """Compare an image with every enrolled image of ``identity`` (a label); the decision
        is the nearest one's (mean distance reported beside it)."""
        thr = self._threshold(threshold)
        check_label(identity, "identity")
        live = self._collections.live(collection)
        with self._sessions() as s:
            enrolled = identity_entries(s, identity, collection=live.collection)
        if not enrolled:
            raise NotFound(f"identity {identity!r} has no enrolled images in collection "
                           f"{live.collection!r}")
        version = live.version_name
        vecs, present = live.reconstruct(np.array([i for i, _ in enrolled], np.int64))
        if not present.any():
            raise NotFound(f"identity {identity!r} is catalogued but none of its images is in "
                           f"index version {version}")
        got = self._front.vectors_and_faces([image], deadline=deadline, names=["image a"])
        q = got.vectors[0]
        vecs = vecs[present]
        keys = [k for (_, k), p in zip(enrolled, present, strict=True) if p]
        dists = np.linalg.norm(vecs - q[None], axis=1)
        best = int(np.argmin(dists))
        return VerifyResult(bool(dists[best] <= thr), float(dists[best]),
                            cosine_from_vectors(q, vecs[best]), thr,
                            self._front.embedder.model_version,
                            enrolled_images=len(keys), mean_distance=float(dists.mean()),
                            nearest_key=keys[best], index_version=version,
                            face_a=got.faces[0])
