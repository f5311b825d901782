"""A Qdrant server through qdrant-client (Kubernetes); the same code runs against local mode in tests.

The manifest lives in the collection's metadata, so a serving pod needs nothing but the URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import qdrant_edge
from qdrant_client import QdrantClient, models

from retriever.corpus import Passage
from retriever.index.base import DENSE, RRF_K, SPARSE, Hit, IndexQuery, passage_of, payload_of, point_id
from retriever.options import IndexOptions

_MANIFEST_KEY = "searchr1"
_MEMORY = {"pinned": models.Memory.PINNED, "cached": models.Memory.CACHED, "cold": models.Memory.COLD}


class QdrantClientIndex:
    def __init__(self, client: QdrantClient, collection: str = "passages") -> None:
        self.client = client
        self.collection = collection

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.client.collection_exists(self.collection):
            return None
        metadata = self.client.get_collection(self.collection).config.metadata or {}
        return metadata.get(_MANIFEST_KEY)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.client.update_collection(self.collection, metadata={_MANIFEST_KEY: manifest})

    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def create(self, dense_dim: int, manifest: dict[str, Any], options: IndexOptions) -> None:
        if self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)
        self.client.create_collection(
            self.collection, **collection_config(dense_dim, options), metadata={_MANIFEST_KEY: manifest}
        )

    def upsert(
        self, passages: Sequence[Passage], dense: np.ndarray, sparse: Sequence[qdrant_edge.SparseVector]
    ) -> None:
        points = [
            models.PointStruct(
                id=point_id(p.id),
                vector={DENSE: vector.tolist(), SPARSE: _sparse(sparse_vector)},
                payload=payload_of(p),
            )
            for p, vector, sparse_vector in zip(passages, dense, sparse, strict=True)
        ]
        self.client.upsert(self.collection, points, wait=True)

    def flush(self) -> None:
        """Nothing to do: the server acknowledges an upsert with wait=True once it is in its write-ahead log."""

    def optimize(self) -> None:
        """Nothing to do: the server builds HNSW in the background as segments fill."""

    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def query(self, queries: Sequence[IndexQuery]) -> list[list[Hit]]:
        if not queries:
            return []
        responses = self.client.query_batch_points(self.collection, [_request(q) for q in queries])
        return [[Hit(passage_of(p.payload or {}), p.score) for p in response.points] for response in responses]

    def close(self) -> None:
        self.client.close()


def _sparse(vector: qdrant_edge.SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=list(vector.indices), values=list(vector.values))


def collection_config(dense_dim: int, options: IndexOptions) -> dict[str, Any]:
    """`create_collection` arguments laying a collection out as `options` say (shards and replicas included)."""
    quantization = _quantization(options)
    hnsw = models.HnswConfigDiff(
        m=options.hnsw_m, ef_construct=options.hnsw_ef_construct, memory=_MEMORY[options.hnsw_memory]
    )
    dense = models.VectorParams(
        size=dense_dim,
        distance=models.Distance.DOT,
        hnsw_config=hnsw,
        quantization_config=quantization,
        memory=_MEMORY[options.vectors_memory],
    )
    sparse = models.SparseVectorParams(
        index=models.SparseIndexParams(memory=_MEMORY[options.sparse_memory]), modifier=models.Modifier.IDF
    )
    return {
        "vectors_config": {DENSE: dense},
        "sparse_vectors_config": {SPARSE: sparse},
        "shard_number": options.shards,
        "replication_factor": options.replicas,
        "payload": models.PayloadStorageParams(memory=_MEMORY[options.payload_memory]),
    }


def _quantization(
    options: IndexOptions,
) -> models.ScalarQuantization | models.BinaryQuantization | models.TurboQuantization | None:
    memory = _MEMORY[options.quantized_memory]
    if options.quantization == "int8":
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, memory=memory)
        )
    if options.quantization == "binary":
        query_encoding = models.BinaryQuantizationQueryEncoding.SCALAR8BITS
        return models.BinaryQuantization(
            binary=models.BinaryQuantizationConfig(query_encoding=query_encoding, memory=memory)
        )
    if options.quantization.startswith("turbo"):
        bits = models.TurboQuantBitSize("bits" + options.quantization.removeprefix("turbo"))
        return models.TurboQuantization(turbo=models.TurboQuantQuantizationConfig(bits=bits, memory=memory))
    return None


def _params(query: IndexQuery) -> models.SearchParams | None:
    # Local mode warns that search params do nothing there, so they are only sent when they mean something.
    if query.exact:
        return models.SearchParams(exact=True, quantization=models.QuantizationSearchParams(ignore=True))
    quantization = None
    if query.quantized is not None:
        quantization = models.QuantizationSearchParams(
            rescore=query.quantized.rescore, oversampling=query.quantized.oversampling
        )
    if query.hnsw_ef is None and quantization is None:
        return None
    return models.SearchParams(hnsw_ef=query.hnsw_ef, quantization=quantization)


def _request(query: IndexQuery) -> models.QueryRequest:
    params = _params(query)
    if query.dense is not None and query.sparse is not None:
        prefetch = max(query.prefetch, query.limit)
        return models.QueryRequest(
            prefetch=[
                models.Prefetch(query=query.dense.tolist(), using=DENSE, limit=prefetch, params=params),
                models.Prefetch(query=_sparse(query.sparse), using=SPARSE, limit=prefetch),
            ],
            query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
            limit=query.limit,
            with_payload=True,
        )
    if query.dense is not None:
        return models.QueryRequest(
            query=query.dense.tolist(), using=DENSE, limit=query.limit, params=params, with_payload=True
        )
    if query.sparse is None:
        raise ValueError("an IndexQuery needs a dense vector, a sparse vector or both")
    return models.QueryRequest(query=_sparse(query.sparse), using=SPARSE, limit=query.limit, with_payload=True)
