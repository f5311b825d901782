"""The rerank backend through the retrieval API over HTTP on loopback: `search_backend=rerank` loads the index
and the cross-encoder (the tiny random one), answers `/retrieve` and `/v1/search` in the local backend's shapes
with the cross-encoder's order and scores over the index's candidates, per query."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from datakit import corpus_in_use
from retriever_testkit import build_test_index, encoder
from support import ThreadServer, wait_until

from retriever.app import create_app
from retriever.encoders import Bm25Encoder
from retriever.index import EdgeIndex
from retriever.rerank import CrossEncoderReranker
from retriever.search import Searcher
from retriever.settings import RetrieverSettings
from services.models import TINY_CROSS_ENCODER, resolve_model

pytestmark = pytest.mark.slow

QUERIES = [corpus_in_use().question, corpus_in_use().queries[0]]
CANDIDATES = 8


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_index(tmp_path_factory, "rerank-index")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return resolve_model(TINY_CROSS_ENCODER, cache_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def http(index_dir: Path, model_dir: str) -> Iterator[httpx.Client]:
    settings = RetrieverSettings(
        index_dir=index_dir, search_backend="rerank", rerank_model=model_dir, rerank_candidates=CANDIDATES
    )
    with ThreadServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 120, "the rerank backend to load")
        yield client


def expected(index_dir: Path, model_dir: str, query: str, topk: int) -> list[tuple[str, float]]:
    """The index's top CANDIDATES for `query` rescored one by one by the cross-encoder, best first."""
    searcher = Searcher(EdgeIndex(index_dir), encoder(), Bm25Encoder())
    try:
        (candidates,) = searcher.search([query], topk=CANDIDATES)
    finally:
        searcher.close()
    model = CrossEncoderReranker(model_dir).model
    scored = [(h.passage.id, float(model.predict([(query, h.passage.contents)])[0])) for h in candidates]
    return sorted(scored, key=lambda pair: -pair[1])[:topk]


def test_retrieve_gives_the_cross_encoders_top_k_per_query(http: httpx.Client, index_dir: Path, model_dir: str) -> None:
    response = http.post("/retrieve", json={"queries": QUERIES, "topk": 3, "return_scores": True})
    assert response.status_code == 200
    for query, results in zip(QUERIES, response.json()["result"], strict=True):
        assert all(set(r) == {"document", "score"} and set(r["document"]) == {"id", "contents"} for r in results)
        want = expected(index_dir, model_dir, query, 3)
        assert [r["document"]["id"] for r in results] == [i for i, _ in want]
        assert [r["score"] for r in results] == pytest.approx([s for _, s in want], abs=1e-5)
        assert results[0]["document"]["contents"].startswith('"')


def test_retrieve_without_scores_and_v1_search_keep_their_shapes(http: httpx.Client) -> None:
    bare = http.post("/retrieve", json={"queries": QUERIES[:1]}).json()["result"][0]
    assert len(bare) == 3 and all(set(doc) == {"id", "contents"} for doc in bare)
    v1 = http.post("/v1/search", json={"queries": QUERIES, "topk": 2}).json()
    for result in v1["results"]:
        assert len(result["hits"]) == 2
        assert all(set(hit) == {"id", "title", "text", "score"} for hit in result["hits"])
    assert [h["id"] for h in v1["results"][0]["hits"]] == [d["id"] for d in bare[:2]]


def test_a_missing_cross_encoder_keeps_the_api_unready_with_the_reason(index_dir: Path, tmp_path: Path) -> None:
    settings = RetrieverSettings(index_dir=index_dir, search_backend="rerank", rerank_model=str(tmp_path / "none"))
    with ThreadServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_until(lambda: "cannot load" in client.get("/readyz").text, 60, "the load to fail")
        ready = client.get("/readyz")
        assert (
            ready.status_code == 503 and "rerank cross-encoder" in ready.text and "SEARCHR1_RERANK_MODEL" in ready.text
        )
        assert client.post("/retrieve", json={"queries": ["q"]}).status_code == 503
