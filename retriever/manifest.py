"""The index manifest: what an index was built from and whether the build finished.

It is written last (atomically, or as collection metadata on a Qdrant server), so an index is served only once
its manifest says `complete`; while building it also records the last corpus line known to be durable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from retriever.encoders import Bm25Params
from retriever.options import IndexOptions

FORMAT_VERSION = 1


class VectorsOrigin(BaseModel):
    """Where an imported index's dense vectors came from (instead of our encoder)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["faiss", "npy", "memmap", "shards"]
    path: str
    fingerprint: str
    count: int = Field(ge=0)


class IndexManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT_VERSION
    state: Literal["building", "complete"] = "building"
    dense_model: str
    dense_dim: int = Field(ge=1)
    bm25: Bm25Params
    corpus: str
    corpus_fingerprint: str
    limit: int | None = Field(None, description="the build stopped after this many passages (tests, benchmarks)")
    committed_lines: int = Field(0, ge=0, description="corpus lines whose passages are durably in the index")
    passages: int = Field(0, ge=0, description="points in the index when it was last committed")
    committed_rows: int = Field(0, ge=0, description="corpus passages before committed_lines (an import's vector row)")
    options: IndexOptions = Field(default_factory=IndexOptions, description="quantisation, memory tiers, HNSW")
    vectors: VectorsOrigin | None = Field(None, description="imported vectors; None = embedded by our encoder")

    def mismatch(self, other: IndexManifest) -> str | None:
        """Why a build described by `other` cannot resume this one, or None if it can."""
        fields = ("format", "dense_model", "dense_dim", "bm25", "corpus_fingerprint", "limit", "options", "vectors")
        for field in fields:
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                return f"the index was built with {field}={mine}, this build has {field}={theirs}"
        return None


class IndexNotReadyError(RuntimeError):
    """The index is missing, half-built or unreadable; the message says what to do."""
