"""Vector stores: the one interface between the indexer/service and wherever vectors are searched.

A :class:`VectorStore` holds, per catalogue collection, the vectors of one *serving version*
(the FAISS backend: an index version directory behind ``CURRENT``; the Milvus backend: a Milvus
collection behind an alias) and answers k-nearest-neighbour queries with filters. Catalogue ids
are the store's ids. The catalogue stays the source of truth for keys, labels and metadata: a
store may keep copies of labels and metadata to filter on (Milvus pushes filters down), and
:mod:`indexer.stores.check` reports and repairs drift between the two.

Backends are named by a spec string (``--vector-store``)::

    faiss                      in-process FAISS index versions under the index root (default)
    milvus:var/milvus.db       Milvus Lite, embedded, on a local file (one process)
    milvus:http://host:19530   a Milvus standalone or distributed server (stateless replicas)

:func:`open_vector_store` looks the name up in :data:`VECTOR_STORES` (a ``ValueError`` lists the
valid names). Backends are imported when opened, so that importing this module stays light
(no faiss, no pymilvus).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from indexer.stores.base import (
    NO_FILTER,
    Items,
    StoreDescription,
    StoreFilter,
    StoreHits,
    StoreQuery,
    VectorStore,
    top_k_within,
)

__all__ = ["NO_FILTER", "VECTOR_STORES", "Items", "StoreDescription", "StoreFilter", "StoreHits",
           "StoreQuery", "VectorStore", "open_vector_store", "parse_store_spec", "top_k_within"]

DEFAULT_STORE = "faiss"


def _open_faiss(arg: str, **options: Any) -> VectorStore:
    from indexer.stores.faiss_store import FaissStore

    if arg:
        options = {**options, "index_root": arg}
    return FaissStore(**options)


def _open_milvus(arg: str, **options: Any) -> VectorStore:
    from indexer.stores.milvus_store import MilvusStore

    if not arg:
        raise ValueError("milvus needs a file (Milvus Lite) or URI: --vector-store "
                         "milvus:var/milvus.db or milvus:http://host:19530")
    options.pop("index_root", None)
    return MilvusStore(arg, **options)


# name -> opener(argument after the colon, **options)
VECTOR_STORES: dict[str, Callable[..., VectorStore]] = {"faiss": _open_faiss,
                                                        "milvus": _open_milvus}


def parse_store_spec(spec: str) -> tuple[str, str]:
    """``"milvus:http://h:19530"`` -> ("milvus", "http://h:19530"); ``"faiss"`` -> ("faiss", "")."""
    name, _, arg = (spec or DEFAULT_STORE).partition(":")
    name = name.strip().lower()
    if name not in VECTOR_STORES:
        raise ValueError(f"unknown vector store {name!r} in {spec!r}; valid: "
                         f"{', '.join(sorted(VECTOR_STORES))} (e.g. faiss, milvus:var/milvus.db, "
                         f"milvus:http://host:19530)")
    return name, arg.strip()


def open_vector_store(spec: str = DEFAULT_STORE, **options: Any) -> VectorStore:
    """The store a spec names, opened with backend ``options`` (``index_root=``, ``sessions=``
    for FAISS; ``consistency=``, ``index=`` for Milvus)."""
    name, arg = parse_store_spec(spec)
    return VECTOR_STORES[name](arg, **options)
