"""Drift between the catalogue (the source of truth) and a vector store: report and repair.

Drift is an id catalogued but not stored (``missing``: a write that reached the catalogue but
not the store), stored but not catalogued (``extra``: the reverse, or a delete that reached only
the catalogue), or stored with another label or metadata than the catalogue's (``stale``: the
Milvus backend filters on its copies). Repair deletes extras, rewrites stale rows with their
stored vectors, and stores missing rows when given their vectors (``embed``: a checkpoint is
needed to compute them; without one they are reported and left for ``imgsim reindex``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.catalog import ImageRow
from indexer.stores.base import Items, VectorStore


@dataclass
class Drift:
    collection: str
    catalogued: int
    stored: int
    missing: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.stale)

    def summary(self) -> str:
        def few(ids: list[int]) -> str:
            return "" if not ids else f" ({', '.join(map(str, ids[:5]))}{', ...' if len(ids) > 5 else ''})"
        return (f"{self.collection}: {self.catalogued} catalogued, {self.stored} stored; "
                f"missing {len(self.missing)}{few(self.missing)}, extra {len(self.extra)}"
                f"{few(self.extra)}, stale {len(self.stale)}{few(self.stale)}")


def check_store(session: Session, store: VectorStore, collection: str) -> Drift:
    """Compare the collection's catalogue rows with what ``store`` serves."""
    rows = {r.id: r for r in session.scalars(select(ImageRow).where(
        ImageRow.collection == collection))}
    stored = store.stored_ids(collection)
    cat = np.array(sorted(rows), np.int64)
    both = np.intersect1d(cat, stored)
    drift = Drift(collection, len(cat), len(stored),
                  missing=np.setdiff1d(cat, stored).tolist(),
                  extra=np.setdiff1d(stored, cat).tolist())
    copies = store.stored_attributes(collection, both.tolist())
    drift.stale = sorted(i for i, (label, meta) in copies.items()
                         if label != rows[i].label or dict(meta or {}) != dict(rows[i].meta or {}))
    return drift


def repair_store(session: Session, store: VectorStore, drift: Drift, *,
                 embed: Callable[[Sequence[ImageRow]], np.ndarray] | None = None) -> Drift:
    """Repair ``drift`` in ``store``; returns what is left (missing rows without ``embed``)."""
    c = drift.collection
    if drift.extra:
        store.remove(c, drift.extra)
    rows = {r.id: r for r in session.scalars(select(ImageRow).where(
        ImageRow.id.in_(drift.stale + drift.missing)))} if drift.stale or drift.missing else {}
    if drift.stale:
        vectors = store.vectors(c, drift.stale)  # type: ignore[attr-defined]  (Milvus only)
        ids = [i for i in drift.stale if i in vectors]
        store.add(c, Items(np.array(ids, np.int64), np.stack([vectors[i] for i in ids]),
                           [rows[i].label for i in ids], [rows[i].meta or {} for i in ids]))
    left = []
    if drift.missing:
        if embed is None:
            left = list(drift.missing)
        else:
            todo = [rows[i] for i in drift.missing]
            store.add(c, Items(np.array([r.id for r in todo], np.int64), embed(todo),
                               [r.label for r in todo], [r.meta or {} for r in todo]))
    return Drift(c, drift.catalogued, drift.stored, missing=left)
