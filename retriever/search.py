"""Batched search: encode every query of a batch at once, then one batched Qdrant query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from retriever.encoders import Bm25Encoder, DenseEncoder, resolve_dense_model
from retriever.index import Hit, IndexBackend, IndexQuery, open_index
from retriever.manifest import IndexManifest, IndexNotReadyError
from retriever.metrics import BATCH_SECONDS, QUERIES
from retriever.options import QuantizedSearch
from retriever.settings import RetrieverSettings, SearchMode
from services.telemetry import Stopwatch


@dataclass(frozen=True, slots=True)
class SearchItem:
    query: str
    topk: int = 3
    mode: SearchMode = "dense"


class Searcher:
    def __init__(
        self,
        index: IndexBackend,
        dense: DenseEncoder,
        sparse: Bm25Encoder,
        *,
        exact: bool = False,
        hnsw_ef: int | None = None,
        hybrid_prefetch: int = 50,
        quantized: QuantizedSearch | None = None,
    ) -> None:
        self.index = index
        self.dense = dense
        self.sparse = sparse
        self.exact = exact
        self.hnsw_ef = hnsw_ef
        self.hybrid_prefetch = hybrid_prefetch
        self.quantized = quantized  # the index's own oversampling and rescoring (from its manifest)

    def search(self, queries: Sequence[str], topk: int = 3, mode: SearchMode = "dense") -> list[list[Hit]]:
        return self.search_items([SearchItem(q, topk, mode) for q in queries])

    def search_items(self, items: Sequence[SearchItem]) -> list[list[Hit]]:
        """Results per item, in order; items may mix modes and topk."""
        dense_rows = [i for i, item in enumerate(items) if item.mode != "sparse"]
        sparse_rows = [i for i, item in enumerate(items) if item.mode != "dense"]
        with Stopwatch() as encode:
            dense_vectors = dict(
                zip(dense_rows, self.dense.encode_queries([items[i].query for i in dense_rows]), strict=True)
            )
            sparse_vectors = dict(
                zip(sparse_rows, self.sparse.encode_queries([items[i].query for i in sparse_rows]), strict=True)
            )
        queries = [
            IndexQuery(
                limit=item.topk,
                dense=dense_vectors.get(i),
                sparse=sparse_vectors.get(i),
                exact=self.exact,
                hnsw_ef=self.hnsw_ef,
                prefetch=self.hybrid_prefetch,
                quantized=self.quantized,
            )
            for i, item in enumerate(items)
        ]
        with Stopwatch() as search:
            results = self.index.query(queries)
        BATCH_SECONDS.labels("encode").observe(encode.seconds)
        BATCH_SECONDS.labels("search").observe(search.seconds)
        for item in items:
            QUERIES.labels(item.mode).inc()
        return results

    def passages(self) -> int:
        return self.index.count()

    def close(self) -> None:
        self.index.close()


def read_manifest(index: IndexBackend) -> IndexManifest:
    """The manifest of a finished build, or IndexNotReadyError saying why the index cannot be served."""
    raw = index.read_manifest()
    if raw is None:
        raise IndexNotReadyError("no index found: build one with `python -m retriever.build --corpus FILE --index DIR`")
    try:
        manifest = IndexManifest.model_validate(raw)
    except ValidationError as exc:
        raise IndexNotReadyError(
            f"the index manifest is unreadable ({exc.error_count()} problems): rebuild it"
        ) from None
    if manifest.state != "complete":
        raise IndexNotReadyError(
            f"the index build stopped at corpus line {manifest.committed_lines}: run the build again to resume it"
        )
    return manifest


def load_searcher(settings: RetrieverSettings) -> Searcher:
    """Open the index the settings point at and the encoders its manifest names."""
    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    index = open_index(settings.index_dir, settings.qdrant_url, api_key, settings.collection, settings.qdrant_timeout_s)
    try:
        manifest = read_manifest(index)
        dense = DenseEncoder(resolve_dense_model(manifest.dense_model))
        if dense.dim != manifest.dense_dim:
            raise IndexNotReadyError(
                f"{manifest.dense_model} gives {dense.dim}-d vectors, the index holds {manifest.dense_dim}-d"
            )
    except BaseException:
        index.close()
        raise
    return Searcher(
        index,
        dense,
        Bm25Encoder(manifest.bm25),
        exact=settings.exact,
        hnsw_ef=settings.hnsw_ef,
        hybrid_prefetch=settings.hybrid_prefetch,
        quantized=manifest.options.quantized_search,
    )
