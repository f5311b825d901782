"""The cross-encoder rerank stage with a tiny random cross-encoder (services.models' tiny-random-cross-encoder):
order by the model's score, the documents' shape kept, no candidate crossing between the queries of a batch,
pairs micro-batched."""

from __future__ import annotations

from pathlib import Path

import pytest

from retriever.corpus import Passage
from retriever.index import Hit
from services.models import TINY_CROSS_ENCODER, resolve_model

QUERIES = ["who wrote the play hamlet", "when did apollo 11 land on the moon"]
TEXTS = [
    ("Hamlet", "Hamlet is a tragedy by William Shakespeare."),
    ("Paris", "Paris is the capital and largest city of France."),
    ("Apollo 11", "The Apollo 11 mission landed on the moon in 1969."),
    ("Thames", "The Thames flows through the city of London."),
    ("France", "France is a country in Western Europe."),
    ("Numbers", "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024."),
    ("Fox", "The quick brown fox jumps over the lazy dog."),
]


def hits(rows: list[tuple[str, str]], prefix: str) -> list[Hit]:
    """Candidates as the index gives them: descending index scores."""
    return [
        Hit(Passage(f"{prefix}{n}", title, f'"{title}"\n{text}'), 1.0 - n / 10) for n, (title, text) in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(resolve_model(TINY_CROSS_ENCODER, cache_dir=tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def reranker(model_dir: Path):  # -> CrossEncoderReranker
    from retriever.rerank import CrossEncoderReranker

    return CrossEncoderReranker(str(model_dir), batch_size=64)


def test_reorders_by_cross_encoder_score_and_keeps_topk(reranker) -> None:
    candidates = hits(TEXTS, "a")
    (result,) = reranker.rerank(QUERIES[:1], [candidates], [4])
    alone = {h.passage.id: float(reranker.model.predict([(QUERIES[0], h.passage.contents)])[0]) for h in candidates}
    expected = sorted(alone, key=lambda i: -alone[i])[:4]
    assert [h.passage.id for h in result] == expected
    assert [h.score for h in result] == pytest.approx([alone[i] for i in expected], abs=1e-5)
    assert [h.passage.id for h in result] != [h.passage.id for h in candidates[:4]], "the index order was kept"


def test_documents_keep_their_shape(reranker) -> None:
    candidates = hits(TEXTS, "a")
    (result,) = reranker.rerank(QUERIES[:1], [candidates], [len(candidates)])
    by_id = {h.passage.id: h.passage for h in candidates}
    assert {h.passage.id for h in result} == set(by_id)
    for hit in result:
        assert hit.passage == by_id[hit.passage.id]  # id, title and contents untouched
        assert isinstance(hit.score, float)


def test_no_candidate_crosses_between_queries_of_a_batch(reranker) -> None:
    first, second = hits(TEXTS[:3], "q0-"), hits(TEXTS[2:], "q1-")  # same texts under other ids, other lengths
    batch = reranker.rerank(QUERIES, [first, second], [3, 3])
    alone = [reranker.rerank([q], [c], [3])[0] for q, c in zip(QUERIES, [first, second], strict=True)]
    assert {h.passage.id for h in batch[0]} <= {h.passage.id for h in first}
    assert {h.passage.id for h in batch[1]} <= {h.passage.id for h in second}
    for together, single in zip(batch, alone, strict=True):
        assert [h.passage.id for h in together] == [h.passage.id for h in single]
        assert [h.score for h in together] == pytest.approx([h.score for h in single], abs=1e-5)
    assert batch[0][0].score != pytest.approx(batch[1][0].score, abs=1e-6)  # scored against their own query


def test_a_query_without_candidates_gets_none(reranker) -> None:
    assert reranker.rerank(QUERIES, [[], hits(TEXTS[:2], "b")], [3, 3])[0] == []


def test_pairs_are_micro_batched(model_dir: Path) -> None:
    from retriever.rerank import CrossEncoderReranker

    small = CrossEncoderReranker(str(model_dir), batch_size=3)
    calls: list[int] = []
    handle = small.model[0].register_forward_hook(lambda _m, args, _o: calls.append(1))
    try:
        result = small.rerank(QUERIES, [hits(TEXTS, "a"), hits(TEXTS[:2], "b")], [2, 2])
    finally:
        handle.remove()
    assert len(calls) == 3  # 9 pairs, 3 per forward pass
    assert [len(r) for r in result] == [2, 2]
