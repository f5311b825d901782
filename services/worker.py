"""The stream-worker runtime every tier reuses.

A worker reads its group's entries, hands decoded messages to the tier's handler with a concurrency limit,
and commits each handler's outputs together with the acknowledgement (see `Streams.commit`). Failed entries
stay pending and are retried after `reclaim_idle_ms` by whichever consumer reclaims them; undecodable ones and
those that keep failing go to the dead-letter stream. SIGTERM drains: stop reading, finish and commit what is
in flight, exit. `/healthz`, `/readyz` and `/metrics` are served when a metrics port is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import make_asgi_app

from services.config import Settings
from services.streams import REDIS_UNAVAILABLE, Entry, M, Output, Streams
from services.telemetry import (
    DEAD_LETTER_REASONS,
    STREAM_DEAD_LETTERS,
    WORKER_HANDLE_SECONDS,
    WORKER_IN_FLIGHT,
    WORKER_PROCESSED,
    WORKER_RECLAIMED,
    counter,
)

log = logging.getLogger(__name__)

Handle = Callable[[M], Awaitable[Sequence[Output]]]
HandleBatch = Callable[[list[M]], Awaitable[Sequence[Sequence[Output] | BaseException]]]

HOUSEKEEPING_INTERVAL_S = 2.0
RECONNECT_BACKOFF_S = (0.1, 5.0)  # first wait, cap: doubled after each failed attempt

WORKER_REDIS_RECONNECTS = counter(
    "searchr1_worker_redis_reconnects_total",
    "Times a worker lost Redis (down, restarting, loading its AOF) and waited to reconnect",
    ["stream", "group"],
)


class PermanentError(Exception):
    """Raised (or returned by a batch handler) for a message that can never succeed: dead-letter it now."""


def default_consumer_name() -> str:
    """Unique per process, stable for its life: `<host>-<pid>`."""
    return f"{socket.gethostname()}-{os.getpid()}"


class StreamWorker(Generic[M]):
    """Consume one stream in one group; give it either `handle` (per message) or `handle_batch`."""

    def __init__(
        self,
        streams: Streams,
        *,
        stream: str,
        group: str,
        message_type: type[M],
        handle: Handle | None = None,
        handle_batch: HandleBatch | None = None,
        consumer: str | None = None,
        concurrency: int = 16,
        read_count: int = 64,
    ) -> None:
        if (handle is None) == (handle_batch is None):
            raise ValueError("give exactly one of handle (per message) or handle_batch")
        if concurrency < 1 or read_count < 1:
            raise ValueError("concurrency and read_count must be at least 1")
        self.streams = streams
        self.stream = stream
        self.group = group
        self.message_type = message_type
        self.consumer = consumer or default_consumer_name()
        self.concurrency = concurrency
        self.read_count = read_count
        self._handle = handle
        self._handle_batch = handle_batch
        self._busy = 0  # messages taken and not yet settled
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._ready = False
        self.last_beat = time.monotonic()
        self._in_flight = WORKER_IN_FLIGHT.labels(stream, group)

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready and not self._stopping.is_set()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < 60

    def request_stop(self) -> None:
        """Begin a graceful drain: read nothing more, finish what is in flight."""
        if not self._stopping.is_set():
            log.info("worker %s draining %d task(s)", self.consumer, len(self._tasks))
            self._stopping.set()

    async def run(self) -> None:
        await self.streams.ensure_group(self.stream, self.group)
        # Counters of rare events start at 0, so dashboards show 0 rather than no data until the first one.
        WORKER_RECLAIMED.labels(self.stream, self.group)
        WORKER_REDIS_RECONNECTS.labels(self.stream, self.group)
        for reason in DEAD_LETTER_REASONS:
            STREAM_DEAD_LETTERS.labels(self.stream, self.group, reason)
        self._ready = True
        try:
            while not self._stopping.is_set():
                try:
                    await self._consume()
                except REDIS_UNAVAILABLE as exc:
                    await self._reconnect(exc)
        finally:
            self._ready = False
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            log.info("worker %s stopped", self.consumer)

    async def _consume(self) -> None:
        """Read and dispatch until stopped; raises when Redis goes away."""
        next_housekeeping = 0.0
        while not self._stopping.is_set():
            self.last_beat = time.monotonic()
            free = await self._wait_for_slots()
            if free == 0:
                continue
            if time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL_S
                entries = await self._housekeeping(free)
                if entries:
                    self._dispatch(entries)
                    continue
            entries = await self.streams.read(
                self.stream,
                self.group,
                self.consumer,
                self.message_type,
                count=min(self.read_count, free),
                block_ms=500,
            )
            self._dispatch(entries)

    async def _reconnect(self, cause: Exception) -> None:
        """Wait for Redis with doubling, capped backoff, then make sure the group is there again (a Redis that
        came back without its AOF has none). Entries in flight meanwhile stay pending and are reclaimed."""
        WORKER_REDIS_RECONNECTS.labels(self.stream, self.group).inc()
        log.warning("worker %s lost Redis (%s: %s); reconnecting", self.consumer, type(cause).__name__, cause)
        self._ready = False
        wait_s, cap_s = RECONNECT_BACKOFF_S
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait_s)
            self.last_beat = time.monotonic()  # waiting on Redis is not a stalled loop
            try:
                await self.streams.ensure_group(self.stream, self.group)
            except REDIS_UNAVAILABLE:
                wait_s = min(wait_s * 2, cap_s)
                continue
            log.info("worker %s reconnected to Redis", self.consumer)
            self._ready = True
            return

    async def _wait_for_slots(self) -> int:
        """Number of messages we may take now (0 after a short wait if all slots are busy)."""
        free = self._free_slots()
        if free == 0:
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait([stop, *self._tasks], timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            free = self._free_slots()
        return free

    def _free_slots(self) -> int:
        return self.concurrency - self._busy

    async def _housekeeping(self, free: int) -> list[Entry[M]]:
        """Refresh the lag gauges, trim consumed entries, and take over entries idle consumers left behind."""
        await self.streams.stats(self.stream, self.group)
        await self.streams.trim_consumed(self.stream)
        entries = await self.streams.reclaim(self.stream, self.group, self.consumer, self.message_type, count=free)
        if entries:
            WORKER_RECLAIMED.labels(self.stream, self.group).inc(len(entries))
            log.info("worker %s reclaimed %d idle entries", self.consumer, len(entries))
        return entries

    # -- processing --------------------------------------------------------------------------------------
    def _dispatch(self, entries: list[Entry[M]]) -> None:
        if not entries:
            return
        batches = [entries] if self._handle_batch is not None else [[entry] for entry in entries]
        for batch in batches:
            self._busy += len(batch)
            task = asyncio.create_task(self._process(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, entries: list[Entry[M]]) -> None:
        self._in_flight.inc(len(entries))
        try:
            good = [entry for entry in entries if entry.message is not None]
            for entry in entries:
                if entry.message is None:
                    await self.streams.dead_letter(self.group, entry, entry.error or "undecodable")
                    WORKER_PROCESSED.labels(self.stream, self.group, "dead_letter").inc()
            if good:
                await self._handle_and_commit(good)
        except Exception:
            log.exception("worker %s failed to settle %d entries; they stay pending", self.consumer, len(entries))
        finally:
            self._in_flight.dec(len(entries))
            self._busy -= len(entries)

    async def _handle_and_commit(self, entries: list[Entry[M]]) -> None:
        messages = [entry.message for entry in entries]
        with WORKER_HANDLE_SECONDS.labels(self.stream, self.group).time():
            results = await self._run_handler(messages)  # type: ignore[arg-type]
        settled: list[tuple[Entry[M], Sequence[Output]]] = []
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, PermanentError):
                await self.streams.dead_letter(self.group, entry, f"{type(result).__name__}: {result}")
                WORKER_PROCESSED.labels(self.stream, self.group, "dead_letter").inc()
            elif isinstance(result, BaseException):
                error = f"{type(result).__name__}: {result}"
                log.warning("handler failed on %s %s: %s", self.stream, entry.entry_id, error)
                await self.streams.record_failure(self.stream, entry.entry_id, error)
                WORKER_PROCESSED.labels(self.stream, self.group, "failed").inc()
            else:
                settled.append((entry, result))
        if settled:
            fresh = await self.streams.commit(self.group, settled)
            WORKER_PROCESSED.labels(self.stream, self.group, "ok").inc(sum(fresh))
            WORKER_PROCESSED.labels(self.stream, self.group, "duplicate").inc(len(fresh) - sum(fresh))

    async def _run_handler(self, messages: list[M]) -> Sequence[Sequence[Output] | BaseException]:
        if self._handle_batch is not None:
            try:
                results = await self._handle_batch(messages)
            except Exception as exc:  # the whole batch failed: every message is retried
                return [exc] * len(messages)
            if len(results) != len(messages):
                error = RuntimeError(f"batch handler returned {len(results)} results for {len(messages)} messages")
                return [error] * len(messages)
            return results
        assert self._handle is not None
        try:
            return [await self._handle(messages[0])]
        except Exception as exc:
            return [exc]


def health_app(worker: StreamWorker) -> FastAPI:
    """`/healthz` (the loop is turning), `/readyz` (consuming, not draining), `/metrics`."""
    app = FastAPI(title=f"searchr1 worker {worker.group}", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n" if worker.alive else "stalled\n", status_code=200 if worker.alive else 503)

    @app.get("/readyz")
    def readyz() -> Response:
        return Response("ready\n" if worker.ready else "not ready\n", status_code=200 if worker.ready else 503)

    app.mount("/metrics", make_asgi_app())
    return app


async def run_worker(worker: StreamWorker, settings: Settings) -> None:
    """Run a worker as a process's main job: signals drain it, and the health server runs beside it."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.request_stop)
    server: uvicorn.Server | None = None
    server_task: asyncio.Task[None] | None = None
    if settings.metrics_port is not None:
        config = uvicorn.Config(
            health_app(worker), host=settings.metrics_host, port=settings.metrics_port, log_level="warning"
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign] - the worker owns signals
        server_task = asyncio.create_task(server.serve())
    try:
        await worker.run()
    finally:
        if server is not None and server_task is not None:
            server.should_exit = True
            await server_task
