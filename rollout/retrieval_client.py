"""Retriever clients for the agent loop: the Search-R1 HTTP contract, and a batcher for concurrent episodes.

`HTTPRetriever` speaks the contract every Search-R1-style trainer uses::

    POST {base}/retrieve  {"queries": [str], "topk": k, "return_scores": true}
    -> {"result": [[{"document": {"id": str, "contents": "\\"Title\\"\\ntext"}, "score": float}, ...], ...]}

`BatchingRetriever` wraps any batched retriever so that the single-query calls of many concurrent episodes
that arrive within `max_wait_s` of each other travel as one batched call (identical queries are sent once).
Both are `rollout.agent.Retriever`s: `await retriever(queries, topk) -> list[list[Document]]`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from rollout.agent import Document, Retriever
from services.telemetry import counter

log = logging.getLogger(__name__)

RETRIES = counter(
    "searchr1_rollout_retrieval_retries_total", "Retrieval calls sent again after a failed attempt", ["reason"]
)
for _reason in ("transport", "server_error"):
    RETRIES.labels(_reason)  # at 0 from the start: a dashboard shows no retries, not no data


class RetrievalError(RuntimeError):
    """The retriever could not answer (unreachable, timed out, error status, or a reply off the contract)."""


def parse_document(item: Any) -> Document:
    """One result entry: `{"document": {...}, "score": s}` or a bare document `{"id", "contents"}`."""
    if not isinstance(item, dict):
        raise RetrievalError(f"result entry must be an object, got {type(item).__name__}")
    score = item.get("score")
    doc = item.get("document", item)
    if not isinstance(doc, dict):
        raise RetrievalError(f"document must be an object, got {type(doc).__name__}")
    if "contents" in doc:
        contents = str(doc["contents"])
    elif "text" in doc:
        contents = f"{doc.get('title', '')}\n{doc['text']}"
    else:
        raise RetrievalError(f"document has neither 'contents' nor 'text': keys {sorted(doc)}")
    return Document(id=str(doc.get("id", "")), contents=contents, score=None if score is None else float(score))


def parse_response(payload: Any, n_queries: int) -> list[list[Document]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("result"), list):
        raise RetrievalError("reply must be an object with a 'result' list")
    result = payload["result"]
    if len(result) != n_queries:
        raise RetrievalError(f"reply holds {len(result)} result lists for {n_queries} queries")
    out = []
    for entries in result:
        if not isinstance(entries, list):
            raise RetrievalError(f"each result must be a list, got {type(entries).__name__}")
        out.append([parse_document(item) for item in entries])
    return out


class HTTPRetriever:
    """Client of `POST /retrieve`. Every request has a timeout; transport errors and 5xx replies are retried
    `retries` times with a short backoff, then raise RetrievalError."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        base = url.rstrip("/")
        self.url = base if base.endswith("/retrieve") else base + "/retrieve"
        self.timeout_s = timeout_s
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.headers = dict(headers or {})
        self._client = client
        self._own_client = client is None
        self.requests = 0

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers)
        return self._client

    async def __call__(self, queries: Sequence[str], topk: int = 3) -> list[list[Document]]:
        queries = list(queries)
        if not queries:
            return []
        body = {"queries": queries, "topk": int(topk), "return_scores": True}
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                RETRIES.labels("transport" if isinstance(last_error, httpx.HTTPError) else "server_error").inc()
                await asyncio.sleep(self.backoff_s * attempt)
            try:
                self.requests += 1
                reply = await self._http().post(self.url, json=body, timeout=self.timeout_s)
            except httpx.HTTPError as exc:
                last_error = exc
                log.warning("retrieve %s attempt %d failed: %r", self.url, attempt + 1, exc)
                continue
            if reply.status_code >= 500:
                last_error = RetrievalError(f"{self.url} answered {reply.status_code}: {reply.text[:200]}")
                continue
            if reply.status_code != 200:
                raise RetrievalError(f"{self.url} answered {reply.status_code}: {reply.text[:200]}")
            try:
                payload = reply.json()
            except ValueError as exc:
                raise RetrievalError(f"{self.url} answered non-JSON: {exc}") from None
            return parse_response(payload, len(queries))
        raise RetrievalError(f"{self.url} failed after {self.retries + 1} attempts: {last_error!r}")

    async def aclose(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
        self._client = None


@dataclass
class _Batch:
    items: list[tuple[list[str], asyncio.Future[list[list[Document]]]]] = field(default_factory=list)
    n_queries: int = 0
    timer: asyncio.TimerHandle | None = None


class BatchingRetriever:
    """Coalesces concurrent calls into one batched call of `backend`.

    A call waits at most `max_wait_s` for company; a batch that reaches `max_batch` queries leaves at once.
    Calls with different `topk` never share a batch. Duplicate queries within a batch are sent once. An error
    of the batched call is raised in every caller of that batch. Lives on one event loop.
    """

    def __init__(self, backend: Retriever, *, max_batch: int = 256, max_wait_s: float = 0.005):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._batches: dict[int, _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.batches_sent = 0
        self.queries_sent = 0

    async def __call__(self, queries: Sequence[str], topk: int = 3) -> list[list[Document]]:
        queries = list(queries)
        if not queries:
            return []
        self.calls += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[list[Document]]] = loop.create_future()
        batch = self._batches.setdefault(topk, _Batch())
        batch.items.append((queries, future))
        batch.n_queries += len(queries)
        if batch.n_queries >= self.max_batch:
            self._flush(topk)
        elif batch.timer is None:
            batch.timer = loop.call_later(self.max_wait_s, self._flush, topk)
        return await future

    def _flush(self, topk: int) -> None:
        batch = self._batches.pop(topk, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._send(batch, topk))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: _Batch, topk: int) -> None:
        unique: dict[str, int] = {}
        for queries, _ in batch.items:
            for query in queries:
                unique.setdefault(query, len(unique))
        self.batches_sent += 1
        self.queries_sent += len(unique)
        try:
            results = await self.backend(list(unique), topk)
            if len(results) != len(unique):
                raise RetrievalError(f"backend returned {len(results)} result lists for {len(unique)} queries")
        except BaseException as exc:  # every waiting caller must learn of the failure
            for _, future in batch.items:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RetrievalError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for queries, future in batch.items:
            if not future.done():
                future.set_result([results[unique[q]] for q in queries])

    async def aclose(self) -> None:
        for topk in list(self._batches):
            self._flush(topk)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
