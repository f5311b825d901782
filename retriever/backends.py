"""The search backend a deployment serves (`search_backend`): the local index, the index plus a cross-encoder
rerank, or a web search API. All answer `search_items` with `Hit`s, so the API's documents keep one shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from retriever.index import Hit
from retriever.search import SearchItem, load_searcher
from retriever.settings import RetrieverSettings


class SearchBackend(Protocol):
    def search_items(self, items: Sequence[SearchItem]) -> list[list[Hit]]:
        """Results per item, in order (called from one worker thread with a coalesced batch)."""

    def passages(self) -> int | None:
        """Passages in the local index; None for a web backend."""

    def close(self) -> None: ...


def load_backend(settings: RetrieverSettings) -> SearchBackend:
    """Open what `settings.search_backend` names; errors say what is missing (index, model, key)."""
    if settings.search_backend in ("serpapi", "google"):
        from retriever.web.search import load_web_searcher

        return load_web_searcher(settings)
    searcher = load_searcher(settings)
    if settings.search_backend == "local":
        return searcher
    from retriever.rerank import CrossEncoderReranker, RerankingSearcher

    try:
        reranker = CrossEncoderReranker(settings.rerank_model, batch_size=settings.rerank_batch_size)
    except Exception as exc:
        searcher.close()
        raise RuntimeError(
            f"cannot load the rerank cross-encoder {settings.rerank_model!r} (SEARCHR1_RERANK_MODEL): {exc}"
        ) from exc
    return RerankingSearcher(searcher, reranker, settings.rerank_candidates)
