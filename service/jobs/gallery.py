"""Retrieval galleries: queries and their top-k hits from an index version, with distances."""

from __future__ import annotations

from pathlib import Path

from indexer.catalog import all_images, image_by_key, open_catalog
from indexer.versions import load_index_version
from service.core import ImageInput, SimilarityCore
from training.models.embedder import Embedder
from training.visualization.embeddings import thumbnail
from training.visualization.plots import gallery


def _query_label(path: Path, known: set[str]) -> str | None:
    """The query's label when its folder (``<label>/x.png``) or name (``<label>__x.png``)
    names a catalogued label; else unknown."""
    for guess in (path.parent.name, path.name.split("__")[0]):
        if guess in known:
            return guess
    return None


def retrieval_gallery(checkpoint: str, index_root: str, catalog_url: str, queries: list[str], *,
                      k: int, out: str | Path) -> tuple[Path, list[dict]]:
    """Search each query image and draw a row: the query, then its k hits (label, distance),
    framed green/red when the query's label is known. -> (png, one dict per hit)."""
    if not queries:
        raise ValueError("give at least one query image")
    missing = [q for q in queries if not Path(q).is_file()]
    if missing:
        raise FileNotFoundError(f"query image not found: {missing[0]}")
    sessions = open_catalog(catalog_url)
    core = SimilarityCore(Embedder.from_checkpoint(checkpoint), load_index_version(index_root),
                          sessions)
    collection = core.index.manifest.collection
    with sessions() as s:
        known = {r.label for r in all_images(s, collection=collection)}
    rows, table = [], []
    for q in queries:
        qpath = Path(q)
        label = _query_label(qpath, known)
        result = core.search(ImageInput(data=qpath.read_bytes()), k)
        hits = []
        with sessions() as s:
            for h in result.hits:
                row = image_by_key(s, h.key, collection=collection)
                ok = None if label is None else h.label == label
                hits.append((thumbnail(row.path, 64), f"{h.label}\nd={h.distance:.3f}", ok))
                table.append({"query": qpath.name, "rank": h.rank, "key": h.key,
                              "label": h.label, "distance": h.distance})
        rows.append((thumbnail(qpath, 64), f"query\n{label or qpath.name}", hits))
    png = gallery(rows, out, title=f"top-{k} from index {result.index_version} "
                                   "(d: distance to the query; smaller is more similar)")
    return png, table
