"""The cluster vector store: Milvus (a server, or Milvus Lite embedded on a file) through
pymilvus's ``MilvusClient``.

- One Milvus collection per index version (``imgsim_<collection>_<hash>__<version>``) and an
  alias per catalogue collection (``imgsim_<collection>_<hash>``): :meth:`MilvusStore.publish`
  fills a new collection, builds its index, measures recall@10 on held-out queries against
  exact search, then moves the alias (``alter_alias``: atomic, the blue/green switch) and drops
  versions beyond ``keep``. Readers always name the alias.
- ``add``/``remove`` (Upsert/Delete) write to the collection the alias names.
- Label and metadata filters and excluded ids are pushed down as a boolean expression. Values
  are data: every string becomes a double-quoted literal with ``\\`` and ``"`` (and control
  characters) escaped (:func:`string_literal`); ids are ints. The installed Milvus Lite
  rejects pymilvus's ``filter_params`` templates (``unexpected character '{'``), so escaping
  is the one way, tested with hostile values.
- Consistency: searches run at ``read_consistency`` (default ``Bounded``: a replica sees
  another's writes within Milvus's staleness bound, a few seconds); the first read of a
  collection after this client wrote to it runs ``Strong``, so a writer reads its own writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from indexer.stores.base import (
    Items,
    StoreDescription,
    StoreFilter,
    StoreHits,
    StoreQuery,
    top_k_within,
)

log = logging.getLogger(__name__)

VECTOR, LABEL, META = "vector", "label", "meta"
CONTENT = "content"  # sha256 of the image the vector was embedded from ("" unknown)
MAX_LABEL = 512  # the catalogue's label column
INSERT_BATCH = 5_000
# filtered HNSW searches explore at least this many candidates per hit wanted (measured in the
# tests: 40 of 400 rows allowed, the tuned ef=16 found 6 of 20 hits)
FILTERED_EF_PER_K = 16


@dataclass(frozen=True)
class StagedVersion:
    """A filled, indexed, tuned Milvus collection that the alias does not name yet."""

    collection: str  # the catalogue collection
    name: str  # the Milvus collection
    version: str
    count: int
    dim: int
    index_type: str
    build: dict
    search_params: dict
    recall: float
    tuning_queries: int
    seconds: float


@dataclass(frozen=True)
class MilvusIndexConfig:
    """Index chosen per version: FLAT (exact) below ``flat_below`` vectors, else HNSW with ``M``
    and ``ef_construction``; ``ef`` tuned to ``target_recall`` over ``ef_candidates``."""

    flat_below: int = 20_000
    m: int = 16
    ef_construction: int = 200
    ef_candidates: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    target_recall: float = 0.95
    tuning_queries: int = 200
    k: int = 10
    seed: int = 0


def string_literal(value: str) -> str:
    """A Milvus expression string literal holding exactly ``value``."""
    out = ['"']
    for ch in str(value):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            raise ValueError(f"control character {ch!r} in a filter value")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def filter_expression(where: StoreFilter) -> str:
    """The Milvus boolean expression of a filter ("" when it restricts nothing)."""
    parts = []
    if where.labels:
        parts.append(f"{LABEL} in [{', '.join(string_literal(v) for v in where.labels)}]")
    for name, value in sorted(where.metadata.items()):
        parts.append(f"{META}[{string_literal(name)}] == {string_literal(value)}")
    if where.excluded_ids:
        parts.append(f"id not in [{', '.join(str(int(i)) for i in where.excluded_ids)}]")
    return " and ".join(f"({p})" for p in parts)


def alias_of(collection: str) -> str:
    """A Milvus name for a catalogue collection: letters, digits, '_' only; the hash keeps
    names that sanitise alike apart."""
    slug = re.sub(r"[^A-Za-z0-9_]", "_", collection)[:100]
    return f"imgsim_{slug}_{hashlib.sha256(collection.encode()).hexdigest()[:8]}"


def _new_version() -> str:
    return datetime.now(UTC).strftime("v%Y%m%dT%H%M%S%fZ")


class MilvusStore:
    backend = "milvus"

    def __init__(self, uri: str, *, index: MilvusIndexConfig = MilvusIndexConfig(),
                 read_consistency: str = "Bounded", token: str = "", describe_ttl: float = 1.0,
                 connect_timeout: float = 10.0, **_: Any) -> None:
        try:
            from pymilvus import MilvusClient
            from pymilvus.exceptions import MilvusException
        except ImportError as e:
            raise ValueError(f"the milvus vector store needs pymilvus (pip install "
                             f"'imgsim[milvus]'): {e}") from None

        self.uri, self.index_config, self.read_consistency = uri, index, read_consistency
        try:
            self.client = MilvusClient(uri, token=token, timeout=connect_timeout)
        except MilvusException as e:  # unreachable server, a Lite file in a missing folder
            raise OSError(f"cannot open Milvus at {uri}: "
                          f"{getattr(e, 'message', None) or e}") from None
        self._wrote: set[str] = set()  # collections this client wrote since its last read
        self._lock = threading.Lock()
        self._described: dict[str, StoreDescription] = {}
        self._described_at: dict[str, float] = {}
        self._content_field: dict[str, bool] = {}  # by Milvus collection name
        self.describe_ttl = describe_ttl

    # -- versions ----------------------------------------------------------------------------

    def serving(self, collection: str) -> str:
        """The Milvus collection the alias names (``LookupError`` when none is published)."""
        if not self._has_alias(alias_of(collection)):
            raise LookupError(f"no published Milvus version of collection {collection!r} "
                              f"({alias_of(collection)} at {self.uri})")
        return self.client.describe_alias(alias_of(collection))["collection_name"]

    def versions(self, collection: str) -> list[str]:
        prefix = alias_of(collection) + "__"
        return sorted(c for c in self.client.list_collections() if c.startswith(prefix))

    def _create(self, name: str, dim: int, n: int) -> tuple[str, dict]:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field(LABEL, DataType.VARCHAR, max_length=MAX_LABEL)
        schema.add_field(META, DataType.JSON)
        schema.add_field(CONTENT, DataType.VARCHAR, max_length=64)
        cfg = self.index_config
        if n < cfg.flat_below:
            index_type, build = "FLAT", {}
        else:
            index_type, build = "HNSW", {"M": cfg.m, "efConstruction": cfg.ef_construction}
        # no index yet: bulk-insert first, then build and load (see _build_index)
        self.client.create_collection(name, schema=schema, consistency_level="Bounded")
        return index_type, build

    def _build_index(self, name: str, index_type: str, build: dict) -> None:
        """Index the inserted rows and load the collection: searches start on a built index.
        (Created with the collection, Milvus Lite 3.2 builds HNSW in the background after
        each flush, and searches meanwhile scan every row with a copy per query: 200 tuning
        queries on 27k x 128 took 34 s and one run grew to 20 GB.)"""
        from pymilvus.exceptions import MilvusException

        params = self.client.prepare_index_params()
        params.add_index(VECTOR, index_type=index_type, metric_type="L2", params=build)
        try:
            self.client.create_index(name, params)
        except MilvusException:
            # A long build (HNSW on 1M rows: 200 s) can outlive the gRPC connection (Milvus
            # Lite sends GOAWAY "too_many_pings"); pymilvus then resends create_index, which
            # fails with "index already exists" although the first call built it. The index
            # being there is success; anything else is an error.
            if not self._has_vector_index(name, index_type):
                raise
            log.info("create_index on %s was retried after the first call built it", name)
        self.client.load_collection(name)

    def _has_vector_index(self, name: str, index_type: str) -> bool:
        try:
            info = self.client.describe_index(name, VECTOR)
        except Exception:  # noqa: BLE001 - no index (or no collection): not built
            return False
        return bool(info) and str(info.get("index_type", "")).upper() == index_type.upper()

    def _insert(self, name: str, items: Items, *, upsert: bool = False,
                content: bool = True) -> None:
        """Write ``items`` into ``name`` (a collection or an alias); ``content``: whether the
        collection has the content field (every one this version creates does)."""
        write = self.client.upsert if upsert else self.client.insert
        for s in range(0, len(items), INSERT_BATCH):
            part = slice(s, s + INSERT_BATCH)
            rows = [{"id": int(i), VECTOR: v, LABEL: str(lab), META: dict(m)}
                    for i, v, lab, m in zip(items.ids[part], items.vectors[part].tolist(),
                                            items.labels[part], items.metadata[part],
                                            strict=True)]
            if content:
                for row, sha in zip(rows, items.contents[part], strict=True):
                    row[CONTENT] = str(sha)
            write(name, rows)

    def _has_content(self, name: str) -> bool:
        """Whether Milvus collection ``name`` has the content field: those published before
        it existed do not (their rows' contents are unknown)."""
        has = self._content_field.get(name)
        if has is None:
            fields = self.client.describe_collection(name)["fields"]
            has = self._content_field[name] = any(f["name"] == CONTENT for f in fields)
        return has

    def publish(self, collection: str, items: Items, *, model: Any = None,
                session: Any = None, keep: int = 2) -> StoreDescription:
        """Fill, index and tune a new version, then move the alias (:meth:`stage` then
        :meth:`commit`)."""
        return self.commit(self.stage(collection, items), model=model, session=session,
                           keep=keep)

    def stage(self, collection: str, items: Items) -> StagedVersion:
        """A new version filled, indexed and its recall@10 measured, not yet served: the slow
        part of a publish (minutes at 1M rows), which needs no lock; :meth:`commit` applies
        what changed meanwhile and moves the alias, :meth:`abandon` drops it."""
        t0 = time.perf_counter()
        n, dim = items.vectors.shape
        version = _new_version()
        name = f"{alias_of(collection)}__{version}"
        index_type, build = self._create(name, dim, n)
        try:
            nq, search_params, recall = self._fill_and_tune(name, items, index_type, build)
        except BaseException:
            self._drop_quietly(name)
            raise
        return StagedVersion(collection, name, version, n, dim, index_type, build,
                             search_params, recall, nq, time.perf_counter() - t0)

    def _fill_and_tune(self, name: str, items: Items, index_type: str,
                       build: dict) -> tuple[int, dict, float]:
        n = len(items)
        cfg = self.index_config
        # held-out queries: inserted after recall is measured, so that they do not find
        # themselves (the way indexer.construct tunes FAISS)
        rng = np.random.default_rng(cfg.seed)
        nq = min(cfg.tuning_queries, n // 10) if n >= 20 else 0
        held = np.sort(rng.choice(n, nq, replace=False)) if nq else np.zeros(0, np.int64)
        base = np.setdiff1d(np.arange(n), held)
        self._insert(name, items.take(base))
        self.client.flush(name)
        self._build_index(name, index_type, build)
        search_params: dict = {}
        recall = 1.0
        if nq:
            truth = _exact(items.vectors[base], items.ids[base], items.vectors[held], cfg.k)
            candidates = [None] if index_type == "FLAT" else list(cfg.ef_candidates)
            for ef in candidates:
                sp = {"ef": max(ef, cfg.k)} if ef else {}
                found = self._search_raw(name, items.vectors[held], cfg.k, "", sp, "Strong")
                recall = _recall(found, truth)
                search_params = sp
                if recall >= cfg.target_recall:
                    break
            self._insert(name, items.take(held))
            self.client.flush(name)
        return int(nq), search_params, recall

    def commit(self, staged: StagedVersion, *, add: Items | None = None,
               remove: Sequence[int] = (), model: Any = None, session: Any = None,
               keep: int = 2) -> StoreDescription:
        """Serve ``staged``: first write into it what changed since it was staged (``remove``
        ids, then ``add`` rows, replacing by id), then move the alias (atomic), drop versions
        beyond ``keep`` and record the version in the catalogue (with ``session``). Callers
        hold the lock writers take, so that nothing is written to the old version between
        the catch-up and the switch."""
        collection, name = staged.collection, staged.name
        count = staged.count
        if len(remove) or (add is not None and len(add)):
            if len(remove):
                self.client.delete(name, ids=[int(i) for i in remove])
            if add is not None and len(add):
                self._insert(name, add, upsert=True)
            self.client.flush(name)
            count = self._count(name)
        t1 = time.perf_counter()
        self._switch(collection, name)
        switch_s = time.perf_counter() - t1
        for old in self.versions(collection)[:-keep] if keep > 0 else []:
            if old != name:
                self.client.drop_collection(old)
        desc = StoreDescription("milvus", collection, staged.version, count, staged.dim,
                                staged.index_type, staged.search_params,
                                round(staged.recall, 4), f"{self.uri}#{name}",
                                {"build": staged.build, "tuning_queries": staged.tuning_queries,
                                 "target_recall": self.index_config.target_recall,
                                 "build_seconds": round(staged.seconds, 3),
                                 "alias_switch_seconds": round(switch_s, 4),
                                 "caught_up_at_commit": len(remove) + (len(add) if add else 0)})
        with self._lock:
            self._described[collection] = desc
            self._described_at[collection] = time.monotonic()
            self._wrote.add(collection)
        if session is not None:
            self._record(session, desc, model)
        log.info("published %s: %s %s recall@10 %.4f (%d vectors, %.1f s)", name,
                 staged.index_type, staged.search_params, staged.recall, count, staged.seconds)
        return desc

    def abandon(self, staged: StagedVersion) -> None:
        """Drop a staged version that will not be committed."""
        self._drop_quietly(staged.name)

    def _drop_quietly(self, name: str) -> None:
        try:
            self.client.drop_collection(name)
        except Exception as e:  # noqa: BLE001 - the error that got us here matters more
            log.warning("could not drop the unfinished Milvus collection %s: %s", name, e)

    def _switch(self, collection: str, name: str) -> None:
        alias = alias_of(collection)
        if self._has_alias(alias):
            self.client.alter_alias(name, alias)
        else:
            self.client.create_alias(name, alias)

    def _has_alias(self, alias: str) -> bool:
        # (describe_alias on a missing alias makes pymilvus log an ERROR with a traceback)
        return alias in self.client.list_aliases().get("aliases", [])

    def _record(self, session: Any, desc: StoreDescription, model: Any) -> None:
        from indexer.catalog import DEFAULT_COLLECTION, record_index_version
        from indexer.publish import model_id_of

        model_id = model_id_of(session, model.checkpoint_sha256) if model is not None else None
        record_index_version(session, name=desc.version,
                             collection=desc.collection or DEFAULT_COLLECTION,
                             factory=f"milvus:{desc.index_type}", model_id=model_id,
                             params={"search": desc.search_params, "store": "milvus",
                                     **desc.extra},
                             count=desc.count, recall_at_10=desc.recall_at_10,
                             path=desc.location, build_seconds=desc.extra["build_seconds"])

    # -- writes ------------------------------------------------------------------------------

    def add(self, collection: str, items: Items) -> None:
        self._insert(alias_of(collection), items, upsert=True,
                     content=self._has_content(self.serving(collection)))
        with self._lock:
            self._wrote.add(collection)

    def remove(self, collection: str, ids: Sequence[int]) -> int:
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        alias = alias_of(collection)
        present = self.client.query(alias, ids=ids, output_fields=["id"],
                                    consistency_level="Strong")
        self.client.delete(alias, ids=ids)
        with self._lock:
            self._wrote.add(collection)
        return len(present)

    # -- reads -------------------------------------------------------------------------------

    def _consistency(self, collection: str) -> str:
        with self._lock:
            if collection in self._wrote:
                self._wrote.discard(collection)
                return "Strong"
        return self.read_consistency

    def _search_raw(self, name: str, vectors: np.ndarray, k: int, expr: str, params: dict,
                    consistency: str) -> list[tuple[np.ndarray, np.ndarray]]:
        res = self.client.search(name, data=np.asarray(vectors, np.float32).tolist(), limit=k,
                                 filter=expr, output_fields=["id"],
                                 search_params={"metric_type": "L2", "params": params},
                                 consistency_level=consistency)
        return [(np.array([h["distance"] for h in hits], np.float32),
                 np.array([h["id"] for h in hits], np.int64)) for hits in res]

    def search(self, collection: str, queries: Sequence[StoreQuery]) -> list[StoreHits]:
        desc = self.describe(collection)
        alias, consistency = alias_of(collection), self._consistency(collection)
        out: list[StoreHits | None] = [None] * len(queries)
        groups: dict[str, list[int]] = {}  # one Milvus call per distinct filter
        for n, q in enumerate(queries):
            groups.setdefault(filter_expression(q.where), []).append(n)
        for expr, rows in groups.items():
            k = max(queries[i].k for i in rows)
            params = desc.search_params
            if expr and "ef" in params:  # a selective filter cuts HNSW's walk short: widen it
                params = {**params, "ef": max(params["ef"], FILTERED_EF_PER_K * k)}
            found = self._search_raw(alias, np.stack([queries[i].vector for i in rows]), k,
                                     expr, params, consistency)
            for i, (d, ids) in zip(rows, found, strict=True):
                d, ids = top_k_within(d, ids, queries[i].k, queries[i].where.max_distance)
                out[i] = StoreHits(d, ids, desc.version)
        return out  # type: ignore[return-value]

    def describe(self, collection: str, *, fresh: bool = False) -> StoreDescription:
        """What the alias names now: looked up at most every ``describe_ttl`` seconds unless
        ``fresh`` (searches name the alias, which Milvus resolves itself; only the version
        reported may lag)."""
        cached = self._described.get(collection)
        now = time.monotonic()
        if (not fresh and cached is not None
                and now - self._described_at.get(collection, 0.0) < self.describe_ttl):
            return cached
        name = self.serving(collection)
        if cached is None or not cached.location.endswith("#" + name):
            cached = self._describe_collection(collection, name)
        with self._lock:
            self._described[collection], self._described_at[collection] = cached, now
        return cached

    def _describe_collection(self, collection: str, name: str) -> StoreDescription:
        """What another process published: the index from Milvus; ef and recall are the
        catalogue's (``index_versions.params``), looked up by the caller when it needs them."""
        info = self.client.describe_index(name, VECTOR)
        dim = next(f["params"]["dim"] for f in self.client.describe_collection(name)["fields"]
                   if f["name"] == VECTOR)
        index_type = info.get("index_type", "")
        params = {"ef": 64} if index_type == "HNSW" else {}
        return StoreDescription("milvus", collection, name.rsplit("__", 1)[-1],
                                int(self.client.get_collection_stats(name)["row_count"]),
                                int(dim), index_type, params, None, f"{self.uri}#{name}")

    def count(self, collection: str) -> int:
        return self._count(alias_of(collection))

    def _count(self, name: str) -> int:
        r = self.client.query(name, filter="", output_fields=["count(*)"],
                              consistency_level="Strong")
        return int(r[0]["count(*)"])

    def _rows(self, collection: str, ids: Sequence[int], fields: list[str]):
        """The serving rows of ``ids`` with ``fields`` (and "id"), read in batches, Strong."""
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), 1000):
            yield from self.client.query(alias_of(collection), ids=ids[s:s + 1000],
                                         output_fields=["id", *fields],
                                         consistency_level="Strong")

    def stored_ids(self, collection: str) -> np.ndarray:
        it = self.client.query_iterator(alias_of(collection), batch_size=10_000, filter="id >= 0",
                                        output_fields=["id"], consistency_level="Strong")
        ids: list[int] = []
        try:
            while batch := it.next():
                ids.extend(r["id"] for r in batch)
        finally:
            it.close()
        return np.sort(np.array(ids, np.int64))

    def stored_attributes(self, collection: str,
                          ids: Sequence[int]) -> dict[int, tuple[str, dict, str]]:
        content = self._has_content(self.serving(collection))
        out: dict[int, tuple[str, dict, str]] = {}
        for r in self._rows(collection, ids, [LABEL, META, *([CONTENT] if content else [])]):
            meta = r[META]
            out[int(r["id"])] = (r[LABEL], json.loads(meta) if isinstance(meta, str) else meta,
                                 r.get(CONTENT, "") if content else "")
        return out

    def vectors(self, collection: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors by id (a repair re-labels a row without re-embedding it)."""
        return {int(r["id"]): np.asarray(r[VECTOR], np.float32)
                for r in self._rows(collection, ids, [VECTOR])}

    def close(self) -> None:
        self.client.close()


def _exact(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(nq, k) ids of the exact nearest neighbours (squared L2), numpy only."""
    out = np.empty((len(queries), min(k, len(vectors))), np.int64)
    norms = (vectors ** 2).sum(1)
    for s in range(0, len(queries), 256):
        q = queries[s:s + 256]
        d = norms[None] - 2 * q @ vectors.T
        nn = np.argpartition(d, out.shape[1] - 1, axis=1)[:, :out.shape[1]]
        order = np.take_along_axis(d, nn, 1).argsort(1)
        out[s:s + 256] = ids[np.take_along_axis(nn, order, 1)]
    return out


def _recall(found: list[tuple[np.ndarray, np.ndarray]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f[1][:k], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size if truth.size else 1.0
