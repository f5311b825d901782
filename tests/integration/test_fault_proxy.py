"""The fault proxy of the retriever-link faults, between the rollout tier's real retrieval client and a stand-in
/retrieve server: bytes pass unchanged, latency holds each call back, drops reset the link (the share asked
for, evenly spread) and the client's retries show in searchr1_rollout_retrieval_retries_total."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from fault_proxy import FaultProxy
from prometheus_client import REGISTRY
from support import fake_retriever

from rollout.retrieval_client import HTTPRetriever, RetrievalError

ANSWER = '"Title"\nabout paris'


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with fake_retriever([("d1", ANSWER)]) as retriever:
        link = FaultProxy(int(retriever["url"].rsplit(":", 1)[1])).start()
        yield link
        link.stop()


def retries() -> float:
    return REGISTRY.get_sample_value("searchr1_rollout_retrieval_retries_total", {"reason": "transport"}) or 0.0


def call(port: int, retries: int = 2) -> tuple[str, float]:
    async def go() -> tuple[str, float]:
        client = HTTPRetriever(f"http://127.0.0.1:{port}", timeout_s=5, retries=retries, backoff_s=0.01)
        started = time.perf_counter()
        try:
            [[document]] = await client(["paris"], topk=1)
            return document.contents, time.perf_counter() - started
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_the_link_passes_bytes_and_adds_latency(proxy: FaultProxy) -> None:
    contents, plain_s = call(proxy.port)
    assert contents == ANSWER and proxy.counts.connections == 1
    proxy.faults(latency_s=0.4)  # on every chunk the client sends
    contents, slow_s = call(proxy.port)
    assert contents == ANSWER
    assert slow_s >= 0.4 > plain_s and proxy.counts.delayed >= 1


def test_dropped_links_are_retried_and_counted(proxy: FaultProxy) -> None:
    before = retries()
    proxy.faults(drop=1.0)
    with pytest.raises(RetrievalError, match="failed after 3 attempts"):
        call(proxy.port)
    assert proxy.counts.dropped == 3 and retries() - before == 2, "each attempt reset, two of them retries"
    proxy.faults(drop=0.5)  # every second request: each call's first attempt dropped, its retry answered
    answers = [call(proxy.port)[0] for _ in range(10)]
    assert answers == [ANSWER] * 10
    assert proxy.counts.dropped == 13 and retries() - before == 12
    proxy.faults()
    assert call(proxy.port)[0] == ANSWER


def test_faults_out_of_range_are_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match=r"drop in \[0, 1\], got 0.0, 1.5"):
        proxy.faults(drop=1.5)
