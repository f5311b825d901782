"""Encoders: model specs (offline default, e5 prefixes), normalised dense vectors, BM25 sparse vectors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from retriever_testkit import encoder

from retriever.encoders import E5_BASE, MINILM, Bm25Encoder, DenseEncoder, resolve_dense_model


def test_known_models_resolve_to_their_specs() -> None:
    minilm = resolve_dense_model("sentence-transformers/all-MiniLM-L6-v2")
    assert minilm.name == MINILM and minilm.source.endswith("model")
    assert (minilm.query_prefix, minilm.passage_prefix) == ("", "")
    e5 = resolve_dense_model("e5-base-v2")
    assert (e5.name, e5.source, e5.query_prefix, e5.passage_prefix, e5.pooling) == (
        E5_BASE,
        "intfloat/e5-base-v2",
        "query: ",
        "passage: ",
        "mean",
    )
    other = resolve_dense_model("/models/mine")
    assert (other.name, other.source, other.query_prefix) == ("/models/mine", "/models/mine", "")


def test_dense_vectors_are_unit_length_and_rank_the_right_passage_first() -> None:
    dense = encoder()
    passages = dense.encode_passage_inputs(dense.passage_inputs(["Paris is the capital of France.", "Cats purr."]))
    query = dense.encode_queries(["what is the capital of france"])
    assert passages.shape == (2, 384) and passages.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(passages, axis=1), 1.0, rtol=1e-5)
    scores = passages @ query[0]
    assert scores[0] > scores[1]
    assert dense.encode_queries([]).shape == (0, 384)


def test_prefixes_are_applied_to_queries_and_passages() -> None:
    shared = encoder()
    prefixed = DenseEncoder(replace(shared.spec, query_prefix="query: ", passage_prefix="passage: "))
    assert prefixed.passage_inputs(["some text"]) == ["passage: some text"]
    np.testing.assert_allclose(
        prefixed.encode_queries(["who"]), shared.encode_passage_inputs(["query: who"]), rtol=1e-5, atol=1e-6
    )


def test_a_model_with_other_pooling_is_refused() -> None:
    spec = replace(resolve_dense_model(MINILM), pooling="cls")
    with pytest.raises(ValueError, match="expected cls pooling, the model has mean"):
        DenseEncoder(spec)


def test_bm25_queries_weigh_terms_once_and_passages_by_frequency() -> None:
    bm25 = Bm25Encoder()
    (query,) = bm25.encode_queries(["running dogs"])
    assert len(query.indices) == 2 and list(query.values) == [1.0, 1.0]
    (passage,) = bm25.encode_passages(["dogs dogs dogs run"])
    weights = dict(zip(passage.indices, passage.values, strict=True))
    assert set(weights) == set(query.indices)  # stemming maps running/run and dogs to the same terms
    assert weights[query.indices[0]] != weights[query.indices[1]]
    assert bm25.encode_queries(["the"])[0].indices == []  # stop words only: an empty vector
