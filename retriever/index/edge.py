"""Embedded Qdrant (qdrant-edge): Qdrant's own engine inside the process, the default on one machine.

Layout of the index folder: `shard/` (the engine's files) and `manifest.json`. The shard is created without a
write-ahead log, which makes bulk loads faster; `flush()` is what makes upserts durable, and the build only
records progress after it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from retriever.corpus import Passage
from retriever.index.base import DENSE, RRF_K, SPARSE, Hit, IndexQuery, passage_of, payload_of, point_id
from retriever.options import IndexOptions

_MEMORY = {"pinned": qe.Memory.Pinned, "cached": qe.Memory.Cached, "cold": qe.Memory.Cold}
_TURBO_BITS = {
    "turbo4": qe.TurboQuantBitSize.Bits4,
    "turbo2": qe.TurboQuantBitSize.Bits2,
    "turbo1": qe.TurboQuantBitSize.Bits1,
}
_FULL_SCAN_KB = 10_000  # Qdrant's default: segments smaller than this are searched without HNSW


class EdgeIndex:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.shard_dir = self.folder / "shard"
        self.manifest_path = self.folder / "manifest.json"
        self._shard: qe.EdgeShard | None = None
        if (self.shard_dir / "edge_config.json").exists():
            self._shard = qe.EdgeShard.load(str(self.shard_dir))

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise RuntimeError(f"no index in {self.folder}: build one first")
        return self._shard

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, self.manifest_path)

    def exists(self) -> bool:
        return self._shard is not None

    def create(self, dense_dim: int, manifest: dict[str, Any], options: IndexOptions) -> None:
        self.manifest_path.unlink(missing_ok=True)
        if self._shard is not None:
            self._shard.close()
            self._shard = None
        shutil.rmtree(self.shard_dir, ignore_errors=True)
        self._shard = qe.EdgeShard.create(str(self.shard_dir), edge_config(dense_dim, options))
        self.write_manifest(manifest)

    def upsert(self, passages: Sequence[Passage], dense: np.ndarray, sparse: Sequence[qe.SparseVector]) -> None:
        points = [
            qe.Point(point_id(p.id), {DENSE: vector.tolist(), SPARSE: sparse_vector}, payload_of(p))
            for p, vector, sparse_vector in zip(passages, dense, sparse, strict=True)
        ]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def flush(self) -> None:
        self.shard.flush()

    def optimize(self) -> None:
        self.shard.optimize()

    def count(self) -> int:
        return self.shard.count(qe.CountRequest(exact=True))

    def query(self, queries: Sequence[IndexQuery]) -> list[list[Hit]]:
        if not queries:
            return []
        batch = qe.QueryBatchRequest([_request(q) for q in queries])
        return [[Hit(passage_of(p.payload or {}), p.score) for p in points] for points in self.shard.query_batch(batch)]

    def close(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None


def edge_config(dense_dim: int, options: IndexOptions) -> qe.EdgeConfig:
    """The engine's configuration for `options`."""
    hnsw = qe.HnswIndexConfig(
        m=options.hnsw_m,
        ef_construct=options.hnsw_ef_construct,
        full_scan_threshold=_FULL_SCAN_KB,
        memory=_MEMORY[options.hnsw_memory],
    )
    quantization = _quantization(options)
    dense = qe.EdgeVectorParams(
        size=dense_dim,
        distance=qe.Distance.Dot,
        quantization_config=quantization,
        hnsw_config=hnsw,
        memory=_MEMORY[options.vectors_memory],
    )
    sparse = qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf, memory=_MEMORY[options.sparse_memory])
    return qe.EdgeConfig(
        vectors={DENSE: dense},
        sparse_vectors={SPARSE: sparse},
        hnsw_config=hnsw,
        payload_memory=_MEMORY[options.payload_memory],
        wal_enabled=False,
    )


def _quantization(options: IndexOptions) -> qe.QuantizationConfigType | None:
    memory = _MEMORY[options.quantized_memory]
    if options.quantization == "int8":
        return qe.ScalarQuantizationConfig(qe.ScalarType.Int8, memory=memory)
    if options.quantization == "binary":
        query_encoding = qe.BinaryQuantizationQueryEncoding.Scalar8Bits
        return qe.BinaryQuantizationConfig(query_encoding=query_encoding, memory=memory)
    if options.quantization.startswith("turbo"):
        return qe.TurboQuantQuantizationConfig(bits=_TURBO_BITS[options.quantization], memory=memory)
    return None


def _request(query: IndexQuery) -> qe.QueryRequest:
    quantized, quantization = query.quantized, None
    if query.exact:  # exact means the float originals, never the codes
        quantization = qe.QuantizationSearchParams(ignore=True)
    elif quantized is not None:
        quantization = qe.QuantizationSearchParams(rescore=quantized.rescore, oversampling=quantized.oversampling)
    params = qe.SearchParams(hnsw_ef=query.hnsw_ef, exact=query.exact, quantization=quantization)
    dense = qe.Query.Nearest(query.dense.tolist(), using=DENSE) if query.dense is not None else None
    sparse = qe.Query.Nearest(query.sparse, using=SPARSE) if query.sparse is not None else None
    if dense is not None and sparse is not None:
        prefetch = max(query.prefetch, query.limit)
        return qe.QueryRequest(
            limit=query.limit,
            prefetches=[
                qe.Prefetch(limit=prefetch, query=dense, params=params),
                qe.Prefetch(limit=prefetch, query=sparse),
            ],
            query=qe.Fusion.Rrf(k=RRF_K),
            with_payload=True,
        )
    return qe.QueryRequest(
        limit=query.limit, query=dense if dense is not None else sparse, params=params, with_payload=True
    )
