"""Settings of the retrieval server (`SEARCHR1_*` env variables or the YAML file, see services.config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from retriever.options import DEFAULT_PROFILE, PROFILES, IndexOptions, resolve_options
from services.config import Settings

SearchMode = Literal["dense", "sparse", "hybrid"]
# local: the Qdrant index; rerank: the index, then a cross-encoder; serpapi / google: a web search API.
SearchBackendName = Literal["local", "rerank", "serpapi", "google"]
DEFAULT_RERANK_MODEL = "cross-encoder/ms-marco-MiniLM-L12-v2"


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
    max_total_chars: int = Field(262_144, ge=1, description="characters of all a request's queries together")
    max_results: int = Field(16_384, ge=1, description="queries x topk per request: passages one answer may hold")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger request bodies are answered 413")
    index_profile: str = Field(
        DEFAULT_PROFILE, description=f"layout of the indexes this deployment builds: {', '.join(PROFILES)}"
    )
    index_options: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the profile's fields (retriever.options.IndexOptions)"
    )
    exact: bool = Field(False, description="exact (flat) dense search instead of HNSW")
    hnsw_ef: int | None = Field(None, ge=1, description="HNSW beam width at query time; None = Qdrant's default")
    hybrid_prefetch: int = Field(50, ge=1, description="candidates per branch fused by RRF in hybrid mode")
    coalesce_wait_ms: float = Field(2.0, ge=0, description="how long the first query of a batch waits for company")
    max_batch_queries: int = Field(512, ge=1, description="queries per encoder batch (Search-R1 used 512)")
    encoder_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; None = one per core. Set it to the pod's CPU limit"
    )
    max_pending_requests: int = Field(1024, ge=1, description="requests waiting for the encoder before 503")

    search_backend: SearchBackendName = Field("local", description="local, rerank, serpapi or google")
    rerank_model: str = Field(DEFAULT_RERANK_MODEL, description="cross-encoder: HF id, local folder or registry name")
    rerank_candidates: int = Field(20, ge=1, description="passages retrieved per query for the cross-encoder")
    rerank_batch_size: int = Field(64, ge=1, description="query/passage pairs per cross-encoder forward pass")
    serpapi_api_key: SecretStr | None = Field(None, description="SerpAPI key (from a Secret)")
    serpapi_url: str = Field("https://serpapi.com/search.json", description="SerpAPI search endpoint")
    google_api_key: SecretStr | None = Field(None, description="Google Custom Search JSON API key (from a Secret)")
    google_cx: str | None = Field(None, description="Programmable Search Engine id (cx)")
    google_url: str = Field("https://www.googleapis.com/customsearch/v1", description="Custom Search endpoint")
    web_timeout_s: float = Field(10.0, gt=0, description="timeout of every web search call")
    web_retries: int = Field(3, ge=0, description="retries of a web search answered 429/5xx or timed out")
    web_backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles with every retry")
    web_rate_per_s: float = Field(5.0, gt=0, description="client-side limit of web search calls per second")
    web_concurrency: int = Field(4, ge=1, description="web search calls in flight at once")
    web_cache_ttl_s: float = Field(3600.0, ge=0, description="how long a web result is reused; 0 = no cache")
    web_cache_entries: int = Field(10_000, ge=1, description="results the web cache holds at most")

    def build_options(self) -> IndexOptions:
        """The layout an index built or imported by this deployment gets."""
        return resolve_options(self.index_profile, self.index_options)

    @model_validator(mode="after")
    def _index_options_valid(self) -> RetrieverSettings:
        self.build_options()  # IndexOptionsError is a ValueError: it names the bad profile or field
        return self

    @model_validator(mode="after")
    def _web_keys_present(self) -> RetrieverSettings:
        """A web backend without its key fails at startup, naming the variable to set."""
        if self.search_backend == "serpapi" and self.serpapi_api_key is None:
            raise ValueError("search_backend=serpapi needs SEARCHR1_SERPAPI_API_KEY (the SerpAPI key)")
        if self.search_backend == "google" and (self.google_api_key is None or not self.google_cx):
            raise ValueError(
                "search_backend=google needs SEARCHR1_GOOGLE_API_KEY (the API key) and SEARCHR1_GOOGLE_CX "
                "(the Programmable Search Engine id)"
            )
        return self
