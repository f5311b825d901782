"""Settings of the retrieval server (`SEARCHR1_*` env variables or the YAML file, see services.config)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from services.config import Settings

SearchMode = Literal["dense", "sparse", "hybrid"]


class RetrieverSettings(Settings):
    """Where the index is, how the API listens, and the limits it enforces."""

    index_dir: Path = Field(Path("var/index"), description="index folder (embedded shard, manifest, cache)")
    qdrant_url: str | None = Field(None, description="Qdrant server URL; None = the embedded engine in index_dir")
    qdrant_api_key: SecretStr | None = Field(None, description="API key of the Qdrant server (from a Secret)")
    qdrant_timeout_s: float = Field(10.0, gt=0, description="timeout of every call to the Qdrant server")
    collection: str = Field("passages", min_length=1, description="Qdrant collection name")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    default_mode: SearchMode = "dense"
    default_topk: int = Field(3, ge=1, description="topk when a /retrieve request leaves it out (Search-R1: 3)")
    max_topk: int = Field(100, ge=1)
    max_queries: int = Field(4096, ge=1, description="queries per request; Search-R1 sends a whole batch at once")
    max_query_chars: int = Field(2048, ge=1)
    exact: bool = Field(False, description="exact (flat) dense search instead of HNSW")
    hnsw_ef: int | None = Field(None, ge=1, description="HNSW beam width at query time; None = Qdrant's default")
    hybrid_prefetch: int = Field(50, ge=1, description="candidates per branch fused by RRF in hybrid mode")
    coalesce_wait_ms: float = Field(2.0, ge=0, description="how long the first query of a batch waits for company")
    max_batch_queries: int = Field(512, ge=1, description="queries per encoder batch (Search-R1 used 512)")
    encoder_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; None = one per core. Set it to the pod's CPU limit"
    )
    max_pending_requests: int = Field(1024, ge=1, description="requests waiting for the encoder before 503")
