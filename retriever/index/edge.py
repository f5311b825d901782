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

    def create(self, dense_dim: int, manifest: dict[str, Any]) -> None:
        self.manifest_path.unlink(missing_ok=True)
        if self._shard is not None:
            self._shard.close()
            self._shard = None
        shutil.rmtree(self.shard_dir, ignore_errors=True)
        config = qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=dense_dim, distance=qe.Distance.Dot)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            wal_enabled=False,
        )
        self._shard = qe.EdgeShard.create(str(self.shard_dir), config)
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


def _request(query: IndexQuery) -> qe.QueryRequest:
    params = qe.SearchParams(hnsw_ef=query.hnsw_ef, exact=query.exact)
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
