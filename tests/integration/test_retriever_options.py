"""Every index layout (retriever.options profiles) on the real embedded engine, built from a generated corpus and
served by the app as deployed: the `/retrieve` contract and `/v1/search` in all three modes, the layout recorded in
the manifest, and a quantised index that searches its codes and rescores the hits with the float originals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from retriever_testkit import cache_path, encoder

from retriever.app import create_app
from retriever.build import build_index
from retriever.index import EdgeIndex, IndexQuery
from retriever.options import PROFILES, QuantizedSearch
from retriever.search import read_manifest
from retriever.settings import RetrieverSettings
from searchr1.fictional import generate

pytestmark = pytest.mark.slow

PASSAGES = 300


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return generate(0).corpus[:PASSAGES]


@pytest.fixture(scope="module")
def corpus(rows: list[dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("generated-corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=list(PROFILES))
def built(request: pytest.FixtureRequest, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp(f"index-{request.param}")
    options = PROFILES[request.param]
    report = build_index(
        corpus, folder, dense=encoder(), cache_path=cache_path(tmp_path_factory), options=options, progress=False
    )
    assert report.passages == PASSAGES
    return request.param, folder


@pytest.fixture(scope="module")
def client(built: tuple[str, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(RetrieverSettings(index_dir=built[1]))) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.2)
        yield client


def test_the_manifest_records_the_layout(built: tuple[str, Path]) -> None:
    name, folder = built
    index = EdgeIndex(folder)
    try:
        assert read_manifest(index).options == PROFILES[name]
    finally:
        index.close()


def test_retrieve_answers_the_reference_contract(client: TestClient, rows: list[dict[str, str]]) -> None:
    wanted = rows[7]
    query = wanted["contents"].split("\n", 1)[1]  # the passage's sentence: its own passage is the best match
    response = client.post("/retrieve", json={"queries": [query, "who founded the town"], "topk": 3,
                                              "return_scores": True})  # fmt: skip
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert len(result) == 2 and all(len(hits) == 3 for hits in result)
    assert result[0][0]["document"] == {"id": wanted["id"], "contents": wanted["contents"]}
    scores = [hit["score"] for hit in result[0]]
    assert scores == sorted(scores, reverse=True)
    bare = client.post("/retrieve", json={"queries": [query]}).json()["result"]
    assert bare[0][0] == {"id": wanted["id"], "contents": wanted["contents"]}


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_every_mode_finds_a_passage_by_its_own_words(client: TestClient, rows: list[dict[str, str]], mode: str) -> None:
    wanted = rows[42]
    query = wanted["contents"].split("\n", 1)[1]
    response = client.post("/v1/search", json={"queries": [query], "topk": 5, "mode": mode})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["hits"][0]["id"] == wanted["id"]


def test_a_quantised_index_searches_codes_and_rescores_with_the_originals(
    built: tuple[str, Path], client: TestClient, rows: list[dict[str, str]]
) -> None:
    name, folder = built
    if PROFILES[name].quantization == "none":
        pytest.skip(f"profile {name} keeps no quantised codes")
    if PROFILES[name].quantization == "int8":
        pytest.skip("Qdrant builds int8 codes only for segments past its indexing threshold (~10 MB of vectors)")
    queries = [row["contents"].split("\n", 1)[1] for row in rows[:20]]
    dense = encoder()
    vectors = dense.encode_queries(queries)
    served = client.post("/v1/search", json={"queries": queries, "topk": 3, "mode": "dense"}).json()["results"]
    index = EdgeIndex(folder)
    try:
        codes = index.query(
            [IndexQuery(limit=3, dense=v, quantized=QuantizedSearch(rescore=False, oversampling=1.0)) for v in vectors]
        )
        exact = index.query([IndexQuery(limit=3, dense=v, exact=True) for v in vectors])
    finally:
        index.close()
    code_scores = np.array([[hit.score for hit in hits] for hits in codes])
    exact_scores = np.array([[hit.score for hit in hits] for hits in exact])
    assert np.abs(code_scores - exact_scores).max() > 1e-3  # unrescored scores are the codes' approximations
    contents = {row["id"]: row["contents"] for row in rows}
    for vector, result in zip(vectors, served, strict=True):
        ids = [hit["id"] for hit in result["hits"]]
        originals = dense.encode_passage_inputs(dense.passage_inputs([contents[i] for i in ids]))
        # the server's scores are the float originals' inner products: its hits were rescored
        np.testing.assert_allclose([hit["score"] for hit in result["hits"]], originals @ vector, atol=1e-4)
