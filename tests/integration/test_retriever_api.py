"""The retrieval API over real HTTP on loopback: Search-R1 compatible shapes, /v1/search, limits answered with
422 and a message, request coalescing, health and metrics, and `python -m retriever.app` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from datakit import corpus_in_use
from prometheus_client import REGISTRY
from retriever_testkit import build_test_index, cache_path, encoder, write_corpus
from support import ThreadServer

from retriever.app import create_app
from retriever.build import build_index
from retriever.encoders import Bm25Encoder
from retriever.index import EdgeIndex
from retriever.search import Searcher
from retriever.settings import RetrieverSettings

pytestmark = pytest.mark.slow

CORPUS = corpus_in_use()
QUERIES = [CORPUS.question, CORPUS.queries[0]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(index_dir: Path, **overrides: object) -> RetrieverSettings:
    limits = {"max_queries": 8, "max_query_chars": 100, "max_topk": 10, "coalesce_wait_ms": 30.0}
    return RetrieverSettings(index_dir=index_dir, **{**limits, **overrides})


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_index(tmp_path_factory, "api-index")


@pytest.fixture(scope="module")
def searcher(index_dir: Path) -> Iterator[Searcher]:
    searcher = Searcher(EdgeIndex(index_dir), encoder(), Bm25Encoder())
    yield searcher
    searcher.close()


@pytest.fixture(scope="module")
def server(index_dir: Path, searcher: Searcher) -> Iterator[ThreadServer]:
    with ThreadServer(create_app(_settings(index_dir), searcher)) as running:
        yield running


@pytest.fixture
def http(server: ThreadServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def test_retrieve_with_scores_has_search_r1_shape(http: httpx.Client, searcher: Searcher) -> None:
    response = http.post("/retrieve", json={"queries": QUERIES, "topk": 3, "return_scores": True})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["result"] and len(body["result"]) == 2
    expected = searcher.search(QUERIES, topk=3)
    for results, hits in zip(body["result"], expected, strict=True):
        assert len(results) == 3
        for item, hit in zip(results, hits, strict=True):
            assert set(item) == {"document", "score"} and set(item["document"]) == {"id", "contents"}
            assert item["document"] == {"id": hit.passage.id, "contents": hit.passage.contents}
            assert isinstance(item["score"], float) and item["score"] == pytest.approx(hit.score, abs=1e-6)
            assert item["document"]["contents"].startswith('"') and "\n" in item["document"]["contents"]
    assert body["result"][0][0]["document"]["contents"].startswith(f'"{CORPUS.top_title}"\n')


def test_retrieve_without_scores_gives_bare_documents_and_defaults_to_three_also_for_topk_0(http: httpx.Client) -> None:
    response = http.post("/retrieve", json={"queries": QUERIES[:1], "unknown_field": "ignored"})
    assert response.status_code == 200
    (results,) = response.json()["result"]
    assert len(results) == 3 and all(set(doc) == {"id", "contents"} for doc in results)
    (zero,) = http.post("/retrieve", json={"queries": QUERIES[:1], "topk": 0}).json()["result"]
    assert zero == results, "topk 0 falls back to the default, as the reference's server"
    assert http.post("/retrieve", json={"queries": []}).json() == {"result": []}


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid", None])
def test_v1_search_returns_ids_titles_text_and_scores(http: httpx.Client, mode: str | None) -> None:
    body = {"queries": QUERIES, "topk": 2} | ({"mode": mode} if mode else {})
    response = http.post("/v1/search", json=body)
    assert response.status_code == 200
    data = response.json()
    assert (data["mode"], data["topk"]) == (mode or "dense", 2)
    assert [r["query"] for r in data["results"]] == QUERIES
    for result in data["results"]:
        assert len(result["hits"]) == 2
        assert all(set(hit) == {"id", "title", "text", "score"} for hit in result["hits"])
    top = data["results"][0]["hits"][0]
    assert (top["id"], top["title"]) == (CORPUS.top_id, CORPUS.top_title)
    assert top["text"].startswith(CORPUS.top_text_start)


LONG = "x" * 101
BAD_REQUESTS = [
    ("/retrieve", {"queries": ["q"] * 9}, ["body", "queries"], "at most 8 queries per request, got 9"),
    ("/retrieve", {"queries": ["ok", LONG]}, ["body", "queries", 1], "query is 101 characters long, the limit is 100"),
    ("/retrieve", {"queries": ["q"], "topk": -1}, ["body", "topk"], "topk must be between 1 and 10, got -1"),
    ("/v1/search", {"queries": ["q"], "topk": 11}, ["body", "topk"], "topk must be between 1 and 10, got 11"),
    ("/retrieve", {"queries": "just a string"}, ["body", "queries"], "Input should be a valid list"),
    ("/retrieve", {"topk": 3}, ["body", "queries"], "Field required"),
    ("/v1/search", {"queries": ["q"], "mode": "x"}, ["body", "mode"], "Input should be 'dense', 'sparse' or 'hybrid'"),
    ("/v1/search", {"queries": ["q"], "k": 3}, ["body", "k"], "Extra inputs are not permitted"),
    ("/v1/search", {"queries": []}, ["body", "queries"], "List should have at least 1 item after validation, not 0"),
]


@pytest.mark.parametrize(("path", "body", "loc", "message"), BAD_REQUESTS)
def test_bad_requests_get_422_naming_the_field(
    http: httpx.Client, path: str, body: dict, loc: list, message: str
) -> None:
    response = http.post(path, json=body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (error["loc"], error["msg"]) == (loc, message)


def test_concurrent_requests_share_encoder_batches(server: ThreadServer, searcher: Searcher) -> None:
    queries = [f"{word} history" for word in ("french", "roman", "chinese", "music", "film", "war", "sport", "art")] * 2
    expected = [[h.passage.id for h in hits] for hits in searcher.search(queries, topk=3)]
    batches_before = REGISTRY.get_sample_value("searchr1_retriever_batch_queries_count") or 0.0

    async def ask_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/retrieve", json={"queries": [q]}) for q in queries))

    responses = asyncio.run(ask_all())
    assert [[doc["id"] for doc in r.json()["result"][0]] for r in responses] == expected
    batches = REGISTRY.get_sample_value("searchr1_retriever_batch_queries_count") - batches_before
    assert 1 <= batches <= 4, f"{len(queries)} concurrent requests ran as {batches} batches"


def test_health_readiness_and_metrics(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").text == "ready\n"
    http.post("/retrieve", json={"queries": ["q"]})
    metrics = http.get("/metrics/").text
    assert 'searchr1_retriever_request_seconds_count{endpoint="/retrieve"}' in metrics
    assert 'searchr1_retriever_requests_total{endpoint="/retrieve",status="422"}' in metrics
    assert "searchr1_retriever_index_passages" in metrics


def test_without_an_index_the_server_is_alive_but_not_ready(tmp_path: Path) -> None:
    with ThreadServer(create_app(_settings(tmp_path / "nothing"))) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/healthz").status_code == 200
        deadline = time.monotonic() + 30
        while "loading" in (ready := http.get("/readyz")).text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.text.startswith("not ready: no index found: build one with")
        response = http.post("/retrieve", json={"queries": ["q"]})
        assert response.status_code == 503 and response.json()["detail"].startswith("index not loaded: no index found")


def test_the_server_process_serves_a_built_index(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    copy = tmp_path / "index"  # its own folder: the module's searcher holds the other one open
    corpus = write_corpus(tmp_path / "corpus.jsonl", CORPUS.lines[:50])
    build_index(corpus, copy, dense=encoder(), cache_path=cache_path(tmp_path_factory), progress=False)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEARCHR1_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    command = [sys.executable, "-m", "retriever.app", "--index", str(copy), "--port", str(port), "--mode", "hybrid"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        response = httpx.post(f"{url}/v1/search", json={"queries": [CORPUS.query], "topk": 1}, timeout=30)
        assert response.json()["mode"] == "hybrid"
        assert response.json()["results"][0]["hits"][0]["id"] == CORPUS.top_id
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells how it ended
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
