"""What every index backend offers, and the types that cross it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import qdrant_edge

from retriever.corpus import Passage
from retriever.options import IndexOptions, QuantizedSearch

DENSE = "dense"
SPARSE = "bm25"
RRF_K = 60  # the constant of reciprocal rank fusion from its paper; Qdrant fuses with it in hybrid mode
_ID_NAMESPACE = uuid.UUID("5b1f6f0e-6c1d-4f55-9d7e-2f1c0a3e8b11")


def point_id(passage_id: str) -> str:
    """The Qdrant point id of a passage: a UUID derived from the passage id, so re-upserting never duplicates."""
    return str(uuid.uuid5(_ID_NAMESPACE, passage_id))


def payload_of(passage: Passage) -> dict[str, str]:
    return {"id": passage.id, "title": passage.title, "contents": passage.contents}


def passage_of(payload: dict[str, Any]) -> Passage:
    return Passage(str(payload["id"]), str(payload.get("title", "")), str(payload["contents"]))


@dataclass(frozen=True, slots=True)
class Hit:
    passage: Passage
    score: float


@dataclass(frozen=True)
class IndexQuery:
    """One search: dense only, sparse only, or both (fused by RRF over `prefetch` candidates of each)."""

    limit: int
    dense: np.ndarray | None = None
    sparse: qdrant_edge.SparseVector | None = None
    exact: bool = False
    hnsw_ef: int | None = None
    prefetch: int = 50
    quantized: QuantizedSearch | None = None  # how to search a quantised index (oversampling, rescoring)


class IndexBackend(Protocol):
    def read_manifest(self) -> dict[str, Any] | None: ...

    def write_manifest(self, manifest: dict[str, Any]) -> None: ...

    def exists(self) -> bool:
        """Whether the collection (or shard) is there, whoever built it."""

    def create(self, dense_dim: int, manifest: dict[str, Any], options: IndexOptions) -> None:
        """An empty collection laid out as `options` say, carrying `manifest`, replacing whatever was there."""

    def upsert(
        self, passages: Sequence[Passage], dense: np.ndarray, sparse: Sequence[qdrant_edge.SparseVector]
    ) -> None: ...

    def flush(self) -> None:
        """Make every upsert so far durable."""

    def optimize(self) -> None:
        """Build the search structures (HNSW) now rather than lazily."""

    def count(self) -> int: ...

    def query(self, queries: Sequence[IndexQuery]) -> list[list[Hit]]: ...

    def close(self) -> None: ...
