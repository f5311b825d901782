"""The coalescer: concurrent requests share batches, each gets its own results, failures and overload surface."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from retriever.batcher import Coalescer, OverloadedError

T = TypeVar("T")


class Recorder:
    """A batch function that doubles numbers and remembers each batch it saw."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.release = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if self.delay_s:
            self.release.wait(self.delay_s)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot handle {self.fail_on}")
        return [2 * item for item in items]


async def _with(coalescer: Coalescer, body: Callable[[], Awaitable[T]]) -> T:
    coalescer.start()
    try:
        return await body()
    finally:
        await coalescer.stop()


def test_concurrent_requests_share_one_batch_and_get_their_own_results() -> None:
    recorder = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(recorder, max_wait_s=0.05)

    async def body() -> list[list[int]]:
        return await asyncio.gather(*(coalescer.submit([i, 100 + i]) for i in range(8)))

    results = asyncio.run(_with(coalescer, body))
    assert results == [[2 * i, 200 + 2 * i] for i in range(8)]
    assert len(recorder.batches) == 1
    assert sorted(recorder.batches[0]) == sorted([i for i in range(8)] + [100 + i for i in range(8)])


def test_requests_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    recorder = Recorder(delay_s=0.2)
    coalescer: Coalescer[int, int] = Coalescer(recorder, max_wait_s=0.0)

    async def body() -> list[list[int]]:
        first = asyncio.ensure_future(coalescer.submit([1]))
        await asyncio.sleep(0.05)  # the first batch is running now
        rest = [asyncio.ensure_future(coalescer.submit([i])) for i in range(2, 6)]
        await asyncio.sleep(0.01)
        recorder.release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(_with(coalescer, body))
    assert results == [[2], [4], [6], [8], [10]]
    assert recorder.batches == [[1], [2, 3, 4, 5]]


def test_batches_stop_growing_at_max_batch() -> None:
    recorder = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(recorder, max_wait_s=0.05, max_batch=4)

    async def body() -> list[list[int]]:
        return await asyncio.gather(*(coalescer.submit([i, i]) for i in range(4)))

    asyncio.run(_with(coalescer, body))
    assert [len(batch) for batch in recorder.batches] == [4, 4]


def test_a_failing_batch_fails_its_requests_and_the_next_batch_still_runs() -> None:
    recorder = Recorder(fail_on=3)
    coalescer: Coalescer[int, int] = Coalescer(recorder, max_wait_s=0.0)

    async def body() -> list[int]:
        with pytest.raises(ValueError, match="cannot handle 3"):
            await coalescer.submit([3])
        return await coalescer.submit([4])

    assert asyncio.run(_with(coalescer, body)) == [8]


def test_empty_requests_skip_the_queue_and_a_full_queue_refuses() -> None:
    recorder = Recorder(delay_s=1.0)
    coalescer: Coalescer[int, int] = Coalescer(recorder, max_wait_s=0.0, max_pending=1)

    async def body() -> None:
        assert await coalescer.submit([]) == []
        running = asyncio.ensure_future(coalescer.submit([1]))
        await asyncio.sleep(0.05)  # taken off the queue and running
        waiting = asyncio.ensure_future(coalescer.submit([2]))
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError, match="1 requests are already waiting"):
            await coalescer.submit([3])
        recorder.release.set()
        assert await asyncio.gather(running, waiting) == [[2], [4]]

    asyncio.run(_with(coalescer, body))


def test_the_wait_for_company_is_skipped_while_requests_come_alone() -> None:
    coalescer: Coalescer[int, int] = Coalescer(Recorder(), max_wait_s=0.3)

    async def body() -> list[float]:
        times = []
        for i in range(3):
            started = time.perf_counter()
            await coalescer.submit([i])
            times.append(time.perf_counter() - started)
        return times

    first, second, third = asyncio.run(_with(coalescer, body))
    assert first >= 0.3  # nothing known yet: the first batch waits
    assert second < 0.1 and third < 0.1


def test_a_failing_batch_is_retried_request_by_request_so_only_the_culprit_fails() -> None:
    recorder = Recorder(fail_on=3)
    coalescer: Coalescer[int, int] = Coalescer(recorder, max_wait_s=0.05)

    async def body() -> list[object]:
        return await asyncio.gather(*(coalescer.submit([i, 10 + i]) for i in (1, 3, 5)), return_exceptions=True)

    good, bad, other = asyncio.run(_with(coalescer, body))
    assert good == [2, 22] and other == [10, 30]
    assert isinstance(bad, ValueError) and str(bad) == "cannot handle 3"
    assert sorted(recorder.batches[0]) == [1, 3, 5, 11, 13, 15], "one coalesced batch first"
    assert sorted(map(sorted, recorder.batches[1:])) == [[1, 11], [3, 13], [5, 15]], "then each request alone"


def test_a_request_larger_than_max_batch_goes_in_pieces_letting_others_in_between() -> None:
    recorder = Recorder(delay_s=0.05)
    coalescer: Coalescer[int, int] = Coalescer(recorder, max_wait_s=0.0, max_batch=4)

    async def body() -> tuple[list[int], list[int]]:
        big = asyncio.ensure_future(coalescer.submit(list(range(12))))
        await asyncio.sleep(0.01)  # the big request's first piece is running
        small = await coalescer.submit([100])
        assert not big.done(), "the small request did not wait for the whole big one"
        return await big, small

    big, small = asyncio.run(_with(coalescer, body))
    assert big == [2 * i for i in range(12)] and small == [200]
    assert all(len(batch) <= 5 for batch in recorder.batches)
    assert recorder.batches[0] == [0, 1, 2, 3] and 100 in recorder.batches[1], "in with the big one's 2nd piece"


def test_a_request_whose_caller_went_away_is_not_run() -> None:
    recorder = Recorder(delay_s=0.2)
    coalescer: Coalescer[int, int] = Coalescer(recorder, max_wait_s=0.0)

    async def body() -> list[int]:
        running = asyncio.ensure_future(coalescer.submit([1]))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(coalescer.submit([2]))
        await asyncio.sleep(0.01)
        gone.cancel()
        recorder.release.set()
        return await running

    assert asyncio.run(_with(coalescer, body)) == [2]
    assert recorder.batches == [[1]]
