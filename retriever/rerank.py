"""Rerank stage: retrieve more candidates than asked for, rescore each (query, passage) pair with a cross-encoder,
keep the best `topk` per query.

The pairs of every query of a coalesced batch go through the cross-encoder together, `batch_size` pairs per
forward pass; each query's scores are then cut back out by offset, so a query only ever ranks its own candidates.
Reranked hits are ordinary `Hit`s (the cross-encoder's score in place of the index's), so the API's documents keep
their shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from retriever.index import Hit
from retriever.metrics import BATCH_SECONDS
from retriever.search import Searcher, SearchItem
from services.telemetry import Stopwatch


class CrossEncoderReranker:
    """A sentence-transformers CrossEncoder scoring (query, passage contents) pairs."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 64, max_length: int = 512) -> None:
        from sentence_transformers import CrossEncoder

        from services.models import resolve_model

        self.batch_size = batch_size
        self.model = CrossEncoder(resolve_model(model), device=device, max_length=max_length)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        scores = self.model.predict(list(pairs), batch_size=self.batch_size, show_progress_bar=False)
        return np.asarray(scores, dtype=np.float32).reshape(len(pairs))

    def rerank(
        self, queries: Sequence[str], candidates: Sequence[Sequence[Hit]], topk: Sequence[int]
    ) -> list[list[Hit]]:
        """Per query, its own candidates ordered by cross-encoder score (best first), the first `topk` kept."""
        pairs = [(query, hit.passage.contents) for query, hits in zip(queries, candidates, strict=True) for hit in hits]
        scores = self.score(pairs)
        results: list[list[Hit]] = []
        start = 0
        for hits, keep in zip(candidates, topk, strict=True):
            own = scores[start : start + len(hits)]
            start += len(hits)
            order = sorted(range(len(hits)), key=lambda i: -own[i])[:keep]  # stable: ties keep the index's order
            results.append([replace(hits[i], score=float(own[i])) for i in order])
        return results


class RerankingSearcher:
    """The index's search, `candidates` passages per query, then the cross-encoder's top `topk`."""

    def __init__(self, searcher: Searcher, reranker: CrossEncoderReranker, candidates: int = 20) -> None:
        self.searcher = searcher
        self.reranker = reranker
        self.candidates = candidates

    def search_items(self, items: Sequence[SearchItem]) -> list[list[Hit]]:
        wide = [replace(item, topk=max(item.topk, self.candidates)) for item in items]
        candidates = self.searcher.search_items(wide)
        with Stopwatch() as rerank:
            results = self.reranker.rerank([i.query for i in items], candidates, [i.topk for i in items])
        BATCH_SECONDS.labels("rerank").observe(rerank.seconds)
        return results

    def passages(self) -> int:
        return self.searcher.passages()

    def close(self) -> None:
        self.searcher.close()
