"""Request bodies of the API. Responses are built as plain dicts: at thousands of documents per second,
validating outgoing models would cost more than the search."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from retriever.settings import SearchMode


class RetrieveRequest(BaseModel):
    """Search-R1's `/retrieve` body, field for field. Unknown fields are ignored, as the reference does."""

    queries: list[str]
    topk: int | None = Field(None, description="passages per query; the server's default_topk (3) when left out")
    return_scores: bool = False


class SearchRequest(BaseModel):
    """Our `/v1/search` body."""

    model_config = ConfigDict(extra="forbid")

    queries: list[str] = Field(min_length=1)
    topk: int = 3
    mode: SearchMode | None = Field(None, description="dense, sparse (BM25) or hybrid (RRF); the server's default")
