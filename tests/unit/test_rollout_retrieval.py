"""Retriever clients: the Search-R1 HTTP contract (over a mock transport) and batching of concurrent calls."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from rollout.agent import Document, format_documents
from rollout.retrieval_client import BatchingRetriever, HTTPRetriever, RetrievalError, parse_response


def contract_handler(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    assert request.url.path == "/retrieve"
    assert body["return_scores"] is True
    result = [
        [
            {"document": {"id": f"{q}-{i}", "contents": f'"Title {i}"\n{q} passage {i}'}, "score": 1.0 - i / 10}
            for i in range(body["topk"])
        ]
        for q in body["queries"]
    ]
    return httpx.Response(200, json={"result": result})


def run(coro):
    return asyncio.run(coro)


def test_http_retriever_speaks_the_contract():
    async def main():
        client = httpx.AsyncClient(transport=httpx.MockTransport(contract_handler))
        retriever = HTTPRetriever("http://retriever:8000", client=client, timeout_s=2)
        result = await retriever(["who", "what"], 2)
        await client.aclose()
        return result

    result = run(main())
    assert len(result) == 2 and [len(r) for r in result] == [2, 2]
    doc = result[1][0]
    assert doc == Document(id="what-0", contents='"Title 0"\nwhat passage 0', score=1.0)
    assert doc.title == '"Title 0"' and doc.text == "what passage 0"
    assert format_documents(result[0]) == 'Doc 1(Title: "Title 0") who passage 0\nDoc 2(Title: "Title 1") who passage 1'


def test_bare_documents_and_title_text_documents_parse():
    payload = {"result": [[{"id": 1, "contents": "T\nbody"}, {"document": {"title": "A", "text": "b"}, "score": 2}]]}
    docs = parse_response(payload, 1)[0]
    assert docs[0] == Document("1", "T\nbody", None)
    assert (docs[1].title, docs[1].text, docs[1].score) == ("A", "b", 2.0)
    with pytest.raises(RetrievalError, match="2 queries"):
        parse_response(payload, 2)
    with pytest.raises(RetrievalError, match="'result' list"):
        parse_response({"results": []}, 1)


def test_server_errors_are_retried_then_reported():
    attempts = []

    def flaky(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        if len(attempts) < 2:
            return httpx.Response(503, text="busy")
        return contract_handler(request)

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="boom")

    def bad_request(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, text="topk must be positive")

    async def main(handler, retries):
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        try:
            return await HTTPRetriever("http://r/", client=client, retries=retries, backoff_s=0.0)(["q"], 1)
        finally:
            await client.aclose()

    assert run(main(flaky, 2))[0][0].id == "q-0" and len(attempts) == 2
    with pytest.raises(RetrievalError, match="after 2 attempts"):
        run(main(broken, 1))
    with pytest.raises(RetrievalError, match="422"):
        run(main(bad_request, 3))


def test_unreachable_retriever_times_out():
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    async def main():
        client = httpx.AsyncClient(transport=httpx.MockTransport(hang))
        try:
            return await HTTPRetriever("http://r", client=client, retries=0)(["q"], 1)
        finally:
            await client.aclose()

    with pytest.raises(RetrievalError, match="ConnectTimeout"):
        run(main())


class CountingBackend:
    def __init__(self, fail: bool = False):
        self.calls: list[tuple[list[str], int]] = []
        self.fail = fail

    async def __call__(self, queries, topk):
        self.calls.append((list(queries), topk))
        await asyncio.sleep(0.001)
        if self.fail:
            raise RetrievalError("backend down")
        return [[Document(q, f"T\n{q}", float(topk))] for q in queries]


def test_concurrent_single_query_calls_travel_as_one_batch():
    backend = CountingBackend()

    async def main():
        batcher = BatchingRetriever(backend, max_wait_s=0.01)
        results = await asyncio.gather(*(batcher([f"q{i % 5}"], 3) for i in range(20)))
        return results, batcher

    results, batcher = run(main())
    assert len(backend.calls) == 1
    assert backend.calls[0] == ([f"q{i}" for i in range(5)], 3)  # duplicates sent once
    assert [r[0][0].id for r in results] == [f"q{i % 5}" for i in range(20)]
    assert (batcher.calls, batcher.batches_sent, batcher.queries_sent) == (20, 1, 5)


def test_batches_split_by_topk_and_by_size():
    backend = CountingBackend()

    async def main():
        batcher = BatchingRetriever(backend, max_batch=4, max_wait_s=0.01)
        calls = [batcher([f"a{i}"], 3) for i in range(6)] + [batcher(["b"], 5)]
        return await asyncio.gather(*calls)

    results = run(main())
    sizes = sorted((len(q), k) for q, k in backend.calls)
    assert sizes == [(1, 5), (2, 3), (4, 3)]
    assert results[-1][0][0].score == 5.0


def test_a_failed_batch_fails_every_caller():
    backend = CountingBackend(fail=True)

    async def main():
        batcher = BatchingRetriever(backend, max_wait_s=0.005)
        return await asyncio.gather(*(batcher([f"q{i}"], 3) for i in range(3)), return_exceptions=True)

    results = run(main())
    assert len(backend.calls) == 1
    assert all(isinstance(r, RetrievalError) for r in results)
