"""The Qdrant index behind one interface: embedded (qdrant-edge) or a server (qdrant-client)."""

from __future__ import annotations

from pathlib import Path

from qdrant_client import QdrantClient

from retriever.index.base import DENSE, SPARSE, Hit, IndexBackend, IndexQuery, point_id
from retriever.index.client import QdrantClientIndex
from retriever.index.edge import EdgeIndex

__all__ = [
    "DENSE",
    "SPARSE",
    "EdgeIndex",
    "Hit",
    "IndexBackend",
    "IndexQuery",
    "QdrantClientIndex",
    "open_index",
    "point_id",
]


def open_index(
    index_dir: str | Path,
    qdrant_url: str | None = None,
    api_key: str | None = None,
    collection: str = "passages",
    timeout_s: float = 10.0,
) -> IndexBackend:
    """The embedded index in `index_dir`, or the collection on the Qdrant server at `qdrant_url`."""
    if qdrant_url:
        return QdrantClientIndex(QdrantClient(url=qdrant_url, api_key=api_key, timeout=int(timeout_s)), collection)
    return EdgeIndex(index_dir)
