"""FAISS index construction by factory string, with catalogue ids as FAISS ids, and memory sizes."""

from __future__ import annotations

import re
from dataclasses import dataclass

import faiss
import numpy as np

# k-means iterations when training IVF centroids: FAISS's default is 25; centroids barely move
# after 10, and training is 2.5x faster
KMEANS_ITERATIONS = 10
METRICS = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}

_IVF = re.compile(r"^(?:OPQ(\d+)(?:_(\d+))?,)?IVF(\d+)(_HNSW\d+)?,(Flat|PQ(\d+)(?:x(\d+))?|SQ8|SQ4)$")
_HNSW = re.compile(r"^HNSW(\d+)(?:,Flat)?$")


@dataclass(frozen=True)
class IndexKind:
    """What a factory string builds, as far as sizing and tuning are concerned."""

    family: str  # "flat" | "hnsw" | "ivf"
    nlist: int = 0  # IVF lists
    code_bytes: int = 0  # bytes per stored vector (0: computed from the dimension)
    hnsw_m: int = 0
    coarse_hnsw: bool = False  # IVF whose coarse quantiser is an HNSW graph over the centroids

    @property
    def trained(self) -> bool:
        return self.family == "ivf"

    @property
    def tuning_param(self) -> str | None:
        return {"ivf": "nprobe", "hnsw": "efSearch"}.get(self.family)


def parse_factory(factory: str, dim: int) -> IndexKind:
    """Classify a factory string; raises ValueError for ones this indexer does not handle."""
    if factory == "Flat":
        return IndexKind("flat", code_bytes=4 * dim)
    if m := _HNSW.match(factory):
        return IndexKind("hnsw", code_bytes=4 * dim, hnsw_m=int(m.group(1)))
    if m := _IVF.match(factory):
        nlist, codes = int(m.group(3)), m.group(5)
        if codes == "Flat":
            code_bytes = 4 * dim
        elif codes == "SQ8":
            code_bytes = dim
        elif codes == "SQ4":
            code_bytes = (dim + 1) // 2
        else:
            pq_m, nbits = int(m.group(6)), int(m.group(7) or 8)
            if (int(m.group(1)) if m.group(1) else dim) % pq_m:
                raise ValueError(f"{factory}: PQ{pq_m} must divide the dimension "
                                 f"{int(m.group(2) or m.group(1) or dim)}")
            code_bytes = (pq_m * nbits + 7) // 8
        return IndexKind("ivf", nlist=nlist, code_bytes=code_bytes,
                         coarse_hnsw=m.group(4) is not None)
    raise ValueError(f"unsupported factory {factory!r}; valid forms: Flat, HNSW<M>, "
                     "IVF<n>,Flat, IVF<n>,PQ<m>[x<bits>], IVF<n>,SQ8, OPQ<m>,IVF<n>,PQ<m>, or auto")


def uses_direct_map(kind: IndexKind, dim: int) -> bool:
    """IVF with uncompressed codes keeps an id -> entry hashtable so ``reconstruct(id)`` works.
    Compressed IVF skips it: it would cost ~50 bytes per vector, several times the code."""
    return kind.family == "ivf" and kind.code_bytes >= 4 * dim


def new_index(factory: str, dim: int, *, metric: str = "l2") -> faiss.Index:
    """An empty index whose ids are catalogue ids.

    Flat and HNSW are wrapped in ``IndexIDMap2``; IVF indexes store ids in their inverted
    lists natively (IndexIDMap's ``remove_ids`` renumbers entries, which breaks IVF, and native
    ids are what FAISS's merge of inverted lists works on)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    kind = parse_factory(factory, dim)
    index = faiss.index_factory(dim, factory, METRICS[metric])
    if kind.family != "ivf":
        return faiss.IndexIDMap2(index)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.niter = KMEANS_ITERATIONS
    if isinstance(ivf, faiss.IndexIVFPQ):
        # polysemous training only serves Hamming-filtered search, which we do not use, and
        # costs minutes (40 s for 8,000 vectors of 16 dimensions)
        ivf.do_polysemous_training = False
    if uses_direct_map(kind, dim):
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF inside ``index`` (possibly behind an OPQ transform), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def estimate_bytes(kind: IndexKind, dim: int, n: int) -> int:
    """Approximate resident size of an index of ``n`` vectors (codes + ids + structure)."""
    if kind.family == "flat":
        return n * (4 * dim + 8 + 16)  # vectors, id map, reverse map
    if kind.family == "hnsw":
        # level-0 links 2M int32, upper levels ~M/(M-1) of that on average; id maps
        return n * (4 * dim + 2 * kind.hnsw_m * 4 + kind.hnsw_m * 4 // 2 + 8 + 16 + 8)
    direct = 52 if uses_direct_map(kind, dim) else 0
    return n * (kind.code_bytes + 8 + direct) + kind.nlist * dim * 4


def index_bytes(index: faiss.Index) -> int:
    """Serialised size of an index: a faithful proxy for its memory."""
    return int(faiss.serialize_index(index).nbytes)


def stored_ids(index: faiss.Index) -> np.ndarray:
    """All ids stored in the index (tombstoned slots excluded), int64."""
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        ids = faiss.vector_to_array(index.id_map)
        return ids[ids >= 0]
    ivf = ivf_of(index)
    if ivf is None:
        raise TypeError(f"{type(index).__name__} does not store catalogue ids")
    invlists = ivf.invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(ivf.nlist) if invlists.list_size(i)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
