"""Drift between the catalogue (the source of truth) and a vector store: report and repair.

Drift is an id catalogued but not stored (``missing``: a write that reached the catalogue but
not the store), stored but not catalogued (``extra``: the reverse, or a delete that reached only
the catalogue), stored with another label or metadata than the catalogue's (``stale``: the
Milvus backend filters on its copies), or stored as the vector of another image than the one
catalogued now (``replaced``: the row's content sha256 is not the catalogue's, e.g. an Upsert of
new pixels that reached only the catalogue; rows written before contents were kept have none and
are counted as ``unverified``). Repair deletes extras, rewrites stale rows with their stored
vectors, and stores missing and replaced rows when given their vectors (``embed``: a checkpoint
is needed to compute them; without one they are reported and left for ``imgsim reindex``).
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
    replaced: list[int] = field(default_factory=list)
    unverified: int = 0  # stored without a content sha256: cannot tell

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.stale or self.replaced)

    def summary(self) -> str:
        def few(ids: list[int]) -> str:
            return "" if not ids else f" ({', '.join(map(str, ids[:5]))}{', ...' if len(ids) > 5 else ''})"
        return (f"{self.collection}: {self.catalogued} catalogued, {self.stored} stored; "
                f"missing {len(self.missing)}{few(self.missing)}, extra {len(self.extra)}"
                f"{few(self.extra)}, stale {len(self.stale)}{few(self.stale)}, replaced "
                f"{len(self.replaced)}{few(self.replaced)}"
                + (f" ({self.unverified} stored without a content hash: not compared)"
                   if self.unverified else ""))


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
    drift.stale = sorted(i for i, (label, meta, _) in copies.items()
                         if label != rows[i].label or dict(meta or {}) != dict(rows[i].meta or {}))
    drift.replaced = sorted(i for i, (_, _, sha) in copies.items()
                            if sha and sha != rows[i].sha256)
    drift.unverified = sum(1 for _, _, sha in copies.values() if not sha)
    return drift


def repair_store(session: Session, store: VectorStore, drift: Drift, *,
                 embed: Callable[[Sequence[ImageRow]], np.ndarray] | None = None) -> Drift:
    """Repair ``drift`` in ``store``; returns what is left (missing rows without ``embed``)."""
    c = drift.collection
    if drift.extra:
        store.remove(c, drift.extra)
    replaced_ids = set(drift.replaced)
    stale = [i for i in drift.stale if i not in replaced_ids]  # those: re-embedded below
    todo_ids = stale + drift.missing + drift.replaced
    rows = {r.id: r for r in session.scalars(select(ImageRow).where(
        ImageRow.id.in_(todo_ids)))} if todo_ids else {}
    if stale:
        vectors = store.vectors(c, stale)  # type: ignore[attr-defined]  (Milvus only)
        ids = [i for i in stale if i in vectors]
        kept = store.stored_attributes(c, ids)  # their contents stay as stored
        store.add(c, Items(np.array(ids, np.int64), np.stack([vectors[i] for i in ids]),
                           [rows[i].label for i in ids], [rows[i].meta or {} for i in ids],
                           [kept[i][2] if i in kept else "" for i in ids]))
    missing, replaced = list(drift.missing), list(drift.replaced)
    if (missing or replaced) and embed is not None:
        todo = [rows[i] for i in missing + replaced]
        store.add(c, Items(np.array([r.id for r in todo], np.int64), embed(todo),
                           [r.label for r in todo], [r.meta or {} for r in todo],
                           [r.sha256 for r in todo]))
        missing, replaced = [], []
    return Drift(c, drift.catalogued, drift.stored, missing=missing, replaced=replaced)
