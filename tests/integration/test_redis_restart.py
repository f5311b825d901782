"""Redis crashes (SIGKILL) and comes back on its AOF: state survives and a running worker carries on by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis

from searchr1.redis_server import PrivateRedis
from services import streams as streams_module
from services.config import Settings
from services.contracts import JobEvent
from services.streams import REDIS_RETRIES, Output, Streams, connect
from services.worker import WORKER_REDIS_RECONNECTS, StreamWorker

AOF_FSYNC_S = 1.2  # appendfsync everysec: wait past one fsync before the crash


def test_aof_brings_back_records_streams_groups_and_pending_entries(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis", appendonly=True).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.hset("job:1", mapping={"state": "RUNNING", "step": "3"})
        for i in range(5):
            client.xadd("s", {"i": str(i)})
        client.xgroup_create("s", "g", id="0")
        client.xreadgroup("g", "c", {"s": ">"}, count=2)  # two delivered, not acknowledged
        client.close()
        time.sleep(AOF_FSYNC_S)
        server.kill()
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.hgetall("job:1") == {b"state": b"RUNNING", b"step": b"3"}
        assert client.xlen("s") == 5
        (group,) = client.xinfo_groups("s")
        assert group["name"] == b"g" and group["pending"] == 2
        ((_, undelivered),) = client.xreadgroup("g", "c", {"s": ">"})
        assert [fields[b"i"] for _, fields in undelivered] == [b"2", b"3", b"4"]  # the group's cursor survived
        client.close()
    finally:
        server.stop()


async def _wait_for(condition, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("client_retries", [True, False], ids=["client-retries", "worker-reconnects"])
def test_worker_rides_out_a_redis_crash_and_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_retries: bool
) -> None:
    """Within its retries a Redis call waits for the restart itself; past them (here: one quick retry) the
    worker's own reconnect loop takes over. Either way nothing is lost or doubled, and the metrics say so."""
    if not client_retries:
        monkeypatch.setattr(streams_module, "REDIS_RETRY", (0.05, 0.05, 1))
    server = PrivateRedis(tmp_path / "redis", appendonly=True).start()
    settings = Settings(redis_url=server.url, key_prefix="crash", reclaim_idle_ms=300, redis_timeout_s=2.0)

    async def scenario() -> tuple[list[str], int, float, float]:
        streams = Streams(connect(settings), settings)
        source, out = "crash:in", "crash:out"

        async def echo(event: JobEvent) -> list[Output]:
            return [Output(out, JobEvent(job_id="j", event="log", message=event.message))]

        worker = StreamWorker(streams, stream=source, group="echo", message_type=JobEvent, handle=echo)
        reconnects = WORKER_REDIS_RECONNECTS.labels(source, "echo")
        before, retried_before = reconnects._value.get(), REDIS_RETRIES._value.get()
        task = asyncio.create_task(worker.run())

        async def outputs() -> int:
            return await streams.redis.xlen(out)

        first = [JobEvent(job_id="j", event="log", message=f"a{i}") for i in range(20)]
        await streams.ensure_group(source, "echo")
        await streams.publish_many(source, first)
        await _wait_for(lambda: _at_least(outputs, 20), 10)
        await asyncio.sleep(AOF_FSYNC_S)
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(1.0)  # the worker is reading into a dead server now
        assert worker.ready is client_retries  # a worker that gave up on Redis says it is not ready
        await asyncio.to_thread(server.start)
        second = [JobEvent(job_id="j", event="log", message=f"b{i}") for i in range(20)]
        await streams.publish_many(source, second)
        await _wait_for(lambda: _at_least(outputs, 40), 15)
        await _wait_for(lambda: _none_pending(streams, source), 10)
        assert worker.ready
        worker.request_stop()
        await task
        rows = await streams.redis.xrange(out)
        messages = [JobEvent.from_wire(fields[b"d"]).message for _, fields in rows]
        await streams.aclose()
        return messages, len(rows), reconnects._value.get() - before, REDIS_RETRIES._value.get() - retried_before

    try:
        messages, count, reconnected, retried = asyncio.run(scenario())
    finally:
        server.stop()
    assert sorted(messages) == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)])
    assert count == 40  # nothing lost, nothing echoed twice
    assert retried >= 1
    if client_retries:
        assert reconnected == 0, "the client's retries outlasted the restart"
    else:
        assert reconnected >= 1


async def _at_least(count, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await count() >= n


async def _none_pending(streams: Streams, stream: str) -> bool:
    return (await streams.stats(stream, "echo")).pending == 0
