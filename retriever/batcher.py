"""Coalesce concurrent requests into one encoder batch.

The encoder is the bottleneck and costs nearly the same for 1 query as for 16, so instead of serving requests
one at a time (the reference), one worker takes every request waiting, waits at most `max_wait_s` for more,
and runs them as one batch in a worker thread. Under load the next batch gathers while the current one runs.
The wait is skipped while requests come one at a time (the last batch held a single request), so a lone
client pays no latency for it.

No request holds others up or takes them down with it: a request larger than `max_batch` goes through in pieces
of `max_batch`, each queued behind whatever arrived meanwhile; a batch that fails is run again request by request,
so only the request that caused the failure gets it; a request whose caller went away is not run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from retriever.metrics import BATCH_QUERIES, PENDING_REQUESTS

T = TypeVar("T")
R = TypeVar("R")


class OverloadedError(RuntimeError):
    """More requests are waiting than the bound allows."""


class Coalescer(Generic[T, R]):
    """`await submit(items)` gives `run(items)`'s results, with items of concurrent calls run together."""

    def __init__(
        self,
        run: Callable[[list[T]], list[R]],
        *,
        max_wait_s: float = 0.002,
        max_batch: int = 512,
        max_pending: int = 1024,
    ) -> None:
        self._run = run
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Sequence[T], asyncio.Future[list[R]]]] = asyncio.Queue(max_pending)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retriever-batch")
        self._task: asyncio.Task[None] | None = None
        self._last_batch_requests = 2  # start out expecting company

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="retriever-coalescer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[T]) -> list[R]:
        results: list[R] = []
        for start in range(0, len(items), self.max_batch):
            results += await self._submit(items[start : start + self.max_batch])
        return results

    async def _submit(self, items: Sequence[T]) -> list[R]:
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((items, future))
        except asyncio.QueueFull:
            raise OverloadedError(f"{self._queue.maxsize} requests are already waiting; retry shortly") from None
        PENDING_REQUESTS.set(self._queue.qsize())
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0][0])
            deadline = time.perf_counter() + (self.max_wait_s if self._last_batch_requests > 1 else 0.0)
            while size < self.max_batch:
                if self._queue.empty():
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        entry = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    entry = self._queue.get_nowait()
                batch.append(entry)
                size += len(entry[0])
            self._last_batch_requests = len(batch)
            PENDING_REQUESTS.set(self._queue.qsize())
            batch = [entry for entry in batch if not entry[1].done()]  # a cancelled request (client gone) is dropped
            if batch:
                BATCH_QUERIES.observe(sum(len(entry_items) for entry_items, _ in batch))
                await loop.run_in_executor(self._executor, self._run_batch, batch)

    def _run_batch(self, batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]]) -> None:
        """Run the batch (in the worker thread); if it fails, run each request alone so only the culprit fails."""
        items = [item for entry_items, _ in batch for item in entry_items]
        try:
            results = self._run(items)
        except Exception as exc:
            if len(batch) == 1:
                self._settle(batch[0][1], exc)
                return
            for entry in batch:
                self._run_batch([entry])
            return
        start = 0
        for entry_items, future in batch:
            self._settle(future, results[start : start + len(entry_items)])
            start += len(entry_items)

    def _settle(self, future: asyncio.Future[list[R]], outcome: list[R] | Exception) -> None:
        """Give a request its results or its error, from the worker thread (the future lives in the loop)."""

        def settle() -> None:
            if future.done():  # cancelled meanwhile: its caller went away
                return
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        future.get_loop().call_soon_threadsafe(settle)
