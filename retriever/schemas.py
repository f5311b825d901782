"""Request bodies of the API. Responses are built as plain dicts: at thousands of documents per second,
validating outgoing models would cost more than the search."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from retriever.settings import SearchMode


def _text(query: str) -> str:
    """A query the encoder can read: JSON may carry lone surrogates (`"\\ud800"`), which are not text."""
    if not query.isascii():
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"not valid Unicode text: a lone surrogate at character {exc.start}") from None
    return query


Query = Annotated[str, AfterValidator(_text)]


class RetrieveRequest(BaseModel):
    """Search-R1's `/retrieve` body, field for field. Unknown fields are ignored, as the reference does."""

    model_config = ConfigDict(allow_inf_nan=False)

    queries: list[Query]
    topk: int | None = Field(
        None, description="passages per query; the server's default_topk (3) when left out or 0, as the reference"
    )
    return_scores: bool = False


class SearchRequest(BaseModel):
    """Our `/v1/search` body."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    queries: list[Query] = Field(min_length=1)
    topk: int = 3
    mode: SearchMode | None = Field(None, description="dense, sparse (BM25) or hybrid (RRF); the server's default")
