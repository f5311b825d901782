"""The retrieval API (`python -m retriever.app`): Search-R1's `POST /retrieve`, our `POST /v1/search`,
`/healthz`, `/readyz` (the backend is loaded) and `/metrics`. Concurrent requests share encoder batches. The
backend (settings.search_backend) is the local index, the index plus a cross-encoder rerank, or a web search API;
a failed web search is answered 429/502/503/504 with the provider's reason."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_args

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retriever.backends import SearchBackend, load_backend
from retriever.batcher import Coalescer, OverloadedError
from retriever.index import Hit
from retriever.metrics import INDEX_PASSAGES, REQUEST_SECONDS, REQUESTS
from retriever.schemas import RetrieveRequest, SearchRequest
from retriever.search import SearchItem
from retriever.settings import RetrieverSettings, SearchBackendName
from retriever.web.client import WebSearchError
from services.bodylimit import BodyLimit
from services.contracts import ContractError
from services.telemetry import configure_logging

log = logging.getLogger(__name__)

_TIMED_PATHS = {"/retrieve", "/v1/search"}
_MAX_ERRORS = 10  # per response, so a batch of 4096 over-long queries does not echo 4096 errors
_MAX_ECHO = 200  # characters of a refused input a 422 repeats
_DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


class _RequestMetrics:
    """Pure ASGI middleware timing the search endpoints (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in _TIMED_PATHS:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            REQUEST_SECONDS.labels(path).observe(time.perf_counter() - started)
            REQUESTS.labels(path, str(status)).inc()


class _State:
    def __init__(self, searcher: SearchBackend | None) -> None:
        self.searcher = searcher
        self.error: str | None = None
        self.coalescer: Coalescer[SearchItem, list[Hit]] | None = None


def create_app(settings: RetrieverSettings | None = None, searcher: SearchBackend | None = None) -> FastAPI:
    """The API over `searcher`, or over the backend `settings` choose, loaded in the background."""
    settings = settings or RetrieverSettings.load()
    state = _State(searcher)
    owns_searcher = searcher is None

    def run_batch(items: list[SearchItem]) -> list[list[Hit]]:
        assert state.searcher is not None  # requests are only queued once it is loaded
        return state.searcher.search_items(items)

    async def load() -> None:
        try:
            state.searcher = await asyncio.to_thread(load_backend, settings)
            passages = await asyncio.to_thread(state.searcher.passages)
            if passages is not None:
                INDEX_PASSAGES.set(passages)
            log.info("%s backend loaded; ready", settings.search_backend)
        except Exception as exc:
            state.error = str(exc)
            log.error("cannot load the %s backend: %s", settings.search_backend, exc)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.coalescer = Coalescer(
            run_batch,
            max_wait_s=settings.coalesce_wait_ms / 1000,
            max_batch=settings.max_batch_queries,
            max_pending=settings.max_pending_requests,
        )
        state.coalescer.start()
        loader = asyncio.create_task(load()) if state.searcher is None else None
        try:
            yield
        finally:
            if loader is not None:
                await loader
            await state.coalescer.stop()
            if owns_searcher and state.searcher is not None:
                state.searcher.close()

    app = FastAPI(title="searchr1 retriever", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(_RequestMetrics)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.mount("/metrics", make_asgi_app())

    def check(queries: Sequence[str], topk: int) -> None:
        errors: list[dict[str, Any]] = []
        if len(queries) > settings.max_queries:
            errors.append(
                _error(("body", "queries"), f"at most {settings.max_queries} queries per request, got {len(queries)}")
            )
        if not 1 <= topk <= settings.max_topk:
            errors.append(_error(("body", "topk"), f"topk must be between 1 and {settings.max_topk}, got {topk}"))
        elif len(queries) * topk > settings.max_results:
            message = f"{len(queries)} queries x topk {topk} is over {settings.max_results} passages; send fewer"
            errors.append(_error(("body", "queries"), message))
        total_chars = sum(len(query) for query in queries)
        if total_chars > settings.max_total_chars:
            message = f"the queries hold {total_chars} characters together, the limit is {settings.max_total_chars}"
            errors.append(_error(("body", "queries"), message))
        for i, query in enumerate(queries):
            if len(query) > settings.max_query_chars:
                message = f"query is {len(query)} characters long, the limit is {settings.max_query_chars}"
                errors.append(_error(("body", "queries", i), message))
                if len(errors) >= _MAX_ERRORS:
                    break
        if errors:
            raise RequestValidationError(errors)

    async def run(items: list[SearchItem], request: Request) -> list[list[Hit]]:
        if state.searcher is None or state.coalescer is None:
            raise HTTPException(503, f"index not loaded: {state.error or 'still loading'}")
        searching = asyncio.ensure_future(state.coalescer.submit(items))
        try:
            while not (await asyncio.wait({searching}, timeout=_DISCONNECT_POLL_S))[0]:
                if await request.is_disconnected():  # the client went away: its pieces not yet run are dropped
                    searching.cancel()
                    raise HTTPException(499, "the client closed the connection")
            return searching.result()
        except OverloadedError as exc:
            raise HTTPException(503, str(exc)) from None
        except WebSearchError as exc:
            raise HTTPException(exc.status, exc.message) from None
        finally:
            searching.cancel()  # a no-op once it is done

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n")

    @app.get("/readyz")
    def readyz() -> Response:
        if state.searcher is not None:
            return Response("ready\n")
        return Response(f"not ready: {state.error or 'loading the index'}\n", status_code=503)

    @app.post("/retrieve")
    async def retrieve(request: RetrieveRequest, http: Request) -> dict[str, Any]:
        """Search-R1's contract: `{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}`, one list
        per query; with `return_scores` false each element is the bare document."""
        topk = request.topk or settings.default_topk  # 0 too, as the reference's server (`if not request.topk`)
        check(request.queries, topk)
        results = await run([SearchItem(q, topk, settings.default_mode) for q in request.queries], http)
        if request.return_scores:
            return {"result": [[{"document": _document(h), "score": h.score} for h in hits] for hits in results]}
        return {"result": [[_document(h) for h in hits] for hits in results]}

    @app.post("/v1/search")
    async def search(request: SearchRequest, http: Request) -> dict[str, Any]:
        """Per query: the hits with passage id, title, text and score."""
        mode = request.mode or settings.default_mode
        check(request.queries, request.topk)
        results = await run([SearchItem(q, request.topk, mode) for q in request.queries], http)
        return {
            "mode": mode,
            "topk": request.topk,
            "results": [
                {
                    "query": query,
                    "hits": [
                        {"id": h.passage.id, "title": h.passage.title, "text": h.passage.text, "score": h.score}
                        for h in hits
                    ],
                }
                for query, hits in zip(request.queries, results, strict=True)
            ],
        }

    return app


def _document(hit: Hit) -> dict[str, str]:
    return {"id": hit.passage.id, "contents": hit.passage.contents}


def _error(loc: tuple[str | int, ...], message: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": loc, "msg": message, "input": None}


def _echo(value: Any) -> Any:
    """A refused input as a 422 repeats it: whole when short and valid JSON text, else the start of its JSON
    (ASCII, so lone surrogates and NaN cannot break the answer) and its length."""
    text = json.dumps(value, default=str)
    if len(text) <= _MAX_ECHO:
        try:
            json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
            return value
        except (ValueError, TypeError):  # NaN, a lone surrogate, something JSON has no word for
            return text
    return f"{text[:_MAX_ECHO]}... ({len(text)} characters)"


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, with at most _MAX_ERRORS errors and each input cut short (a 422 must not echo megabytes)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{**error, "input": _echo(error.get("input"))} for error in exc.errors()[:_MAX_ERRORS]]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def serve(settings: RetrieverSettings | None = None, **overrides: Any) -> None:
    """Run the API until SIGTERM/SIGINT. `overrides` are settings fields, e.g. `serve(index_dir=..., port=8000)`."""
    settings = settings or RetrieverSettings.load(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    if settings.encoder_threads is not None:
        torch.set_num_threads(settings.encoder_threads)  # process-wide, so the batch thread uses it too
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=False, log_level="warning")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retriever.app", description="Serve the retrieval API.")
    parser.add_argument("--index", dest="index_dir", type=Path, help="index folder (default: SEARCHR1_INDEX_DIR)")
    parser.add_argument("--qdrant-url", help="serve a collection of a Qdrant server instead")
    parser.add_argument("--collection")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--mode", dest="default_mode", choices=["dense", "sparse", "hybrid"])
    parser.add_argument(
        "--backend",
        dest="search_backend",
        choices=list(get_args(SearchBackendName)),
        help="what answers searches (default: SEARCHR1_SEARCH_BACKEND, else local)",
    )
    parser.add_argument("--exact", action="store_true", default=None, help="exact (flat) dense search, no HNSW")
    parser.add_argument("--threads", dest="encoder_threads", type=int, help="torch CPU threads (default: all)")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = RetrieverSettings.load(**overrides)
    except ContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
