"""Bad and oversized requests sent to the real retrieval API (real index, real encoder, real HTTP): each gets a
4xx naming what is wrong, without echoing the input back, and the clients beside it are served as before."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from retriever_testkit import build_test_index, encoder
from support import ThreadServer

from retriever.app import create_app
from retriever.encoders import Bm25Encoder
from retriever.index import EdgeIndex
from retriever.search import Searcher
from retriever.settings import RetrieverSettings

pytestmark = pytest.mark.slow

LIMITS = {"max_queries": 512, "max_query_chars": 100, "max_topk": 10, "max_total_chars": 4000, "max_results": 600,
          "max_body_bytes": 65_536, "max_batch_queries": 16, "coalesce_wait_ms": 5.0}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    index_dir: Path = build_test_index(tmp_path_factory, "hardening-index")
    searcher = Searcher(EdgeIndex(index_dir), encoder(), Bm25Encoder())
    with ThreadServer(create_app(RetrieverSettings(index_dir=index_dir, **LIMITS), searcher)) as running:
        yield running
    searcher.close()


@pytest.fixture
def http(server: ThreadServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def post_raw(http: httpx.Client, path: str, text: str) -> httpx.Response:
    return http.post(path, content=text, headers={"Content-Type": "application/json"})


GOOD = {"queries": ["roman history"], "topk": 2}


@pytest.mark.parametrize("path", ["/retrieve", "/v1/search"])
def test_a_lone_surrogate_is_refused_and_the_requests_beside_it_are_served(http: httpx.Client, path: str) -> None:
    results: list[httpx.Response] = []

    def good_client() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=60) as other:
            results.extend(other.post(path, json=GOOD) for _ in range(5))

    thread = threading.Thread(target=good_client)
    thread.start()
    for _ in range(5):  # concurrent with the good client, so they share batches
        response = post_raw(http, path, '{"queries": ["music", "\\ud800 film"], "topk": 2}')
        assert response.status_code == 422, response.text
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "queries", 1]
        assert "lone surrogate at character 0" in error["msg"]
    thread.join()
    assert [r.status_code for r in results] == [200] * 5


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        ({"queries": ["q"] * 100, "topk": 10}, ["body", "queries"], "100 queries x topk 10 is over 600 passages"),
        ({"queries": ["x" * 90] * 50, "topk": 1}, ["body", "queries"], "hold 4500 characters together"),
    ],
)
def test_work_per_request_is_bounded(http: httpx.Client, body: dict, loc: list, message: str) -> None:
    for path in ("/retrieve", "/v1/search"):
        response = http.post(path, json=body)
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == loc and message in error["msg"]
    assert http.post("/retrieve", json=GOOD).status_code == 200


@pytest.mark.parametrize(
    ("text", "loc"),
    [
        ('{"queries": ["q"], "topk": NaN}', ["body", "topk"]),
        ('{"queries": ["q"], "topk": Infinity}', ["body", "topk"]),
        ('{"queries": ["q"], "mode": NaN}', ["body", "mode"]),
        ('{"queries": ["q"], "topk": -Infinity, "mode": "dense"}', ["body", "topk"]),
    ],
)
def test_nan_and_infinity_get_422(http: httpx.Client, text: str, loc: list) -> None:
    path = "/v1/search"
    response = post_raw(http, path, text)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert response.json()["detail"][0]["input"] in ("NaN", "Infinity", "-Infinity")


def test_a_422_does_not_echo_megabytes_and_big_bodies_get_413(http: httpx.Client) -> None:
    long = "x" * 60_000
    refused = post_raw(http, "/v1/search", json.dumps({"queries": long}))
    assert refused.status_code == 422 and len(refused.content) < 2_000
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "queries"] and error["input"].endswith("(60002 characters)")
    many = post_raw(http, "/v1/search", json.dumps({"queries": [1] * 20_000}))
    assert many.status_code == 422 and len(many.json()["detail"]) == 10 and len(many.content) < 10_000
    huge = http.post("/retrieve", json={"queries": ["x" * 50] * 2000})
    assert huge.status_code == 413 and "larger than 65536 bytes" in huge.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"queries": ["'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"]}'

    streamed = http.post("/retrieve", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert http.post("/retrieve", json=GOOD).status_code == 200


def test_a_big_request_does_not_hold_a_small_one_behind_it(http: httpx.Client) -> None:
    big_body = {"queries": [f"history of the {i}th war and its music" for i in range(96)], "topk": 3}
    finished: dict[str, float] = {}

    def big_client() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=120) as other:
            response = other.post("/v1/search", json=big_body)
            assert response.status_code == 200 and len(response.json()["results"]) == 96
        finished["big"] = time.perf_counter()

    alone = time.perf_counter()
    assert http.post("/v1/search", json=big_body).status_code == 200
    alone = time.perf_counter() - alone  # six batches of 16 queries

    thread = threading.Thread(target=big_client)
    started = time.perf_counter()
    thread.start()
    time.sleep(alone / 6)  # the big request is on its first pieces
    small = http.post("/v1/search", json=GOOD)
    finished["small"] = time.perf_counter()
    thread.join()
    assert small.status_code == 200
    assert finished["small"] < finished["big"], "the small request was served between the big one's pieces"
    assert finished["small"] - started < alone, (finished["small"] - started, alone)


def batches_run() -> float:
    return REGISTRY.get_sample_value("searchr1_retriever_batch_queries_count") or 0.0


def test_a_request_whose_client_went_away_stops_between_its_pieces(http: httpx.Client) -> None:
    """Twenty-five pieces; the client leaves after a fifth of the time they take. The server notices within its check
    interval (250 ms), so what ran is about a fifth of the pieces plus that interval's worth, never all of them:
    the bound is a share of the pieces, so it holds on a slow or busy machine too."""
    pieces = 25  # of 16 queries each, within the module's limits on queries, characters and results
    body = {"queries": [f"film {i}" for i in range(16 * pieces)], "topk": 1}
    before = batches_run()
    started = time.perf_counter()
    assert http.post("/v1/search", json=body).status_code == 200
    alone = time.perf_counter() - started
    assert batches_run() - before == pieces
    before = batches_run()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/search", json=body, timeout=alone / 5)
    time.sleep(alone * 1.5)  # long enough for all the pieces, had they gone on
    assert batches_run() - before < pieces * 0.75, "the pieces after the client left were not run"
    assert http.post("/retrieve", json=GOOD).status_code == 200


@pytest.mark.parametrize(
    "text", ['{"queries": ["a"], "topk": 1' + "0" * 4400 + "}", '{"queries": ' + "[" * 30_000 + "]" * 30_000 + "}"]
)
def test_unparseable_json_gets_a_400(http: httpx.Client, text: str) -> None:
    """A 4,401-digit integer or nesting past Python's stack: FastAPI's own 400, not a 500."""
    for path in ("/retrieve", "/v1/search"):
        response = post_raw(http, path, text)
        assert response.status_code == 400 and response.json()["detail"] == "There was an error parsing the body"
    assert http.post("/retrieve", json=GOOD).status_code == 200
