"""The kernel's stream guarantees against a real Redis: sharing, reclaim after kill -9, dead letters, drain."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import redis
from support import wait_until

from services.config import Settings
from services.contracts import (
    ContractError,
    JobEvent,
    Message,
    RolloutRequest,
    ScoredTrajectory,
    Trajectory,
    VersionSpan,
    WeightsPublished,
)
from services.streams import DATA_FIELD, KIND_FIELD, Output, Streams, connect

ECHO_WORKER = Path(__file__).with_name("echo_worker.py")


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def events(n: int, job: str = "job-1") -> list[JobEvent]:
    return [JobEvent(job_id=job, event="log", message=f"m{i}") for i in range(n)]


def sample_trajectory() -> Trajectory:
    return Trajectory(
        job_id="job-1",
        request_id="req",
        prompt_uid="nq:1",
        prompt_ids=np.arange(10),
        response_ids=np.arange(6),
        loss_mask=np.array([1, 1, 0, 0, 1, 1], dtype=np.uint8),
        logprobs=np.linspace(-1, 0, 6),
        version_spans=[VersionSpan(start=0, end=6, version=3)],
        response_text="<answer>x</answer>",
    )


@pytest.fixture
def echo_workers(worker_env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start echo worker processes; any left running are killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(consumer: str, sleep_s: float = 0.0, concurrency: int = 16) -> subprocess.Popen[str]:
        env = dict(worker_env, ECHO_SLEEP_S=str(sleep_s), ECHO_CONSUMER=consumer, ECHO_CONCURRENCY=str(concurrency))
        process = subprocess.Popen(
            [sys.executable, str(ECHO_WORKER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", "echo worker did not start"
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def output_ids(settings: Settings) -> list[tuple[str, str]]:
    """(input msg id, consumer) for every output entry."""
    client = redis.Redis.from_url(settings.redis_url)
    rows = client.xrange(f"{settings.key_prefix}:out")
    result = []
    for _, fields in rows:
        echo = JobEvent.from_wire(fields[DATA_FIELD])
        result.append((echo.message, str(echo.data["consumer"])))
    return result


def publish(settings: Settings, messages: list[Message]) -> None:
    async def go() -> None:
        streams = Streams(connect(settings), settings)
        await streams.ensure_group(f"{settings.key_prefix}:in", "echo")
        await streams.publish_many(f"{settings.key_prefix}:in", messages)
        await streams.redis.aclose()

    run(go())


def pending(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    return client.xpending(f"{settings.key_prefix}:in", "echo")["pending"]


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        RolloutRequest(job_id="j", prompt_uid="nq:1", prompt_ids=np.arange(5), golden_answers=["x"]),
        sample_trajectory(),
        ScoredTrajectory(trajectory=sample_trajectory(), reward=1.0, extracted_answer="x"),
        WeightsPublished(job_id="j", version=4, uri="file:///w/4", checksum="abc"),
        JobEvent(job_id="j", event="metrics", step=3, data={"reward_mean": 0.5}),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_message_type_round_trips_through_redis(settings: Settings, message: Message) -> None:
    async def go() -> Message:
        streams = Streams(connect(settings), settings)
        stream = f"{settings.key_prefix}:rt"
        await streams.ensure_group(stream, "g")
        await streams.publish(stream, message)
        [entry] = await streams.read(stream, "g", "c1", type(message), count=10, block_ms=100)
        assert entry.error is None
        assert await streams.ack(stream, "g", [entry.entry_id]) == 1
        await streams.redis.aclose()
        return entry.message

    received = run(go())
    assert received.model_dump(mode="json") == message.model_dump(mode="json")


def test_wrong_kind_and_garbage_are_reported_not_raised(settings: Settings) -> None:
    async def go() -> list:
        streams = Streams(connect(settings), settings)
        stream = f"{settings.key_prefix}:bad"
        await streams.ensure_group(stream, "g")
        await streams.redis.xadd(stream, {KIND_FIELD: b"job_event", DATA_FIELD: b"\xc1garbage"})
        await streams.publish(stream, WeightsPublished(job_id="j", version=1, uri="file:///x"))
        entries = await streams.read(stream, "g", "c", JobEvent, count=10, block_ms=100)
        await streams.redis.aclose()
        return entries

    garbage, wrong_kind = run(go())
    assert garbage.message is None and "not valid msgpack" in garbage.error
    assert wrong_kind.message is None and "expected 'job_event'" in wrong_kind.error


def test_latest_and_entries_read_a_stream_without_a_group(settings: Settings) -> None:
    async def go() -> None:
        streams = Streams(connect(settings), settings)
        stream = f"{settings.key_prefix}:weights"
        assert await streams.latest(stream, WeightsPublished) is None
        first, second = (WeightsPublished(job_id="j", version=v, uri=f"file:///w/{v}") for v in (1, 2))
        ids = await streams.publish_many(stream, [first, second])
        assert (await streams.latest(stream, WeightsPublished)).version == 2
        assert [e.message.version for e in await streams.entries(stream, WeightsPublished)] == [1, 2]
        [after_first] = await streams.entries(stream, WeightsPublished, after=ids[0])
        assert after_first.entry_id == ids[1]
        assert await streams.entries(stream, WeightsPublished, after=ids[1], block_ms=50) == []
        await streams.redis.xadd(stream, {KIND_FIELD: b"weights_published", DATA_FIELD: b"\xc1garbage"})
        [garbage] = await streams.entries(stream, WeightsPublished, after=ids[1], block_ms=50)
        assert garbage.message is None and "not valid msgpack" in garbage.error
        with pytest.raises(ContractError, match="not valid msgpack"):
            await streams.latest(stream, WeightsPublished)
        await streams.aclose()

    run(go())


def test_dead_letters_are_listed_counted_and_replayed(settings: Settings) -> None:
    async def go() -> None:
        streams = Streams(connect(settings), settings)
        stream = f"{settings.key_prefix}:work"
        await streams.ensure_group(stream, "g")
        await streams.publish_many(stream, events(3))
        entries = await streams.read(stream, "g", "c", JobEvent, block_ms=100)
        for entry in entries:
            await streams.dead_letter("g", entry, f"failed {entry.message.message}")
        assert await streams.dead_letter_count(stream) == 3
        letters = await streams.dead_letters(stream, count=2)
        assert [letter.error for letter in letters] == ["failed m0", "failed m1"]
        await streams.replay(stream, letters)
        assert await streams.dead_letter_count(stream) == 1
        replayed = await streams.read(stream, "g", "c", JobEvent, block_ms=100)
        assert [e.message.message for e in replayed] == ["m0", "m1"]
        assert [e.message.msg_id for e in replayed] == [e.message.msg_id for e in entries[:2]]
        await streams.aclose()

    run(go())


def test_commit_publishes_once_per_message_id(settings: Settings) -> None:
    """A message delivered twice (say, reclaimed from a slow consumer) has its effect only once."""

    async def go() -> tuple[list[bool], int, int]:
        streams = Streams(connect(settings), settings)
        source, out = f"{settings.key_prefix}:src", f"{settings.key_prefix}:out"
        await streams.ensure_group(source, "g")
        message = events(1)[0]
        await streams.publish(source, message)
        await streams.publish(source, message)  # the same msg_id published twice
        entries = await streams.read(source, "g", "c", JobEvent, count=10, block_ms=100)
        results = await streams.commit("g", [(e, [Output(out, JobEvent(job_id="j", event="log"))]) for e in entries])
        length = await streams.redis.xlen(out)
        stats = await streams.stats(source, "g")
        await streams.redis.aclose()
        return results, length, stats.pending

    results, out_length, still_pending = run(go())
    assert results == [True, False]
    assert out_length == 1
    assert still_pending == 0


def test_bounded_streams_and_trim_keeps_what_groups_still_need(settings: Settings) -> None:
    bounded = Settings(**{**settings.model_dump(), "stream_maxlen": 100})

    async def go() -> tuple[int, int, int]:
        streams = Streams(connect(bounded), bounded)
        stream = f"{bounded.key_prefix}:cap"
        await streams.ensure_group(stream, "g")
        await streams.publish_many(stream, events(1000))
        capped = await streams.redis.xlen(stream)
        entries = await streams.read(stream, "g", "c", JobEvent, count=30, block_ms=100)
        await streams.ack(stream, "g", [e.entry_id for e in entries[:20]])  # 10 stay pending
        trimmed = await streams.trim_consumed(stream)
        remaining = await streams.redis.xlen(stream)
        await streams.redis.aclose()
        return capped, trimmed, remaining

    capped, trimmed, remaining = run(go())
    assert capped < 300  # approximate trimming: within a few radix-tree nodes of the bound
    assert trimmed == 20  # acknowledged entries before the oldest pending one
    assert remaining == capped - 20


def test_two_consumer_processes_share_work_without_duplicates(settings, echo_workers) -> None:
    messages = events(300)
    echo_workers("a", sleep_s=0.02, concurrency=4)
    echo_workers("b", sleep_s=0.02, concurrency=4)
    publish(settings, messages)
    wait_until(lambda: len(output_ids(settings)) >= 300, 60, "300 outputs")
    time.sleep(0.3)
    outputs = output_ids(settings)
    handled = Counter(msg_id for msg_id, _ in outputs)
    assert set(handled) == {m.msg_id for m in messages}
    assert max(handled.values()) == 1, "some message was processed twice"
    per_consumer = Counter(consumer for _, consumer in outputs)
    assert per_consumer["a"] > 0 and per_consumer["b"] > 0, per_consumer
    wait_until(lambda: pending(settings) == 0, 10, "no pending entries")


def test_kill_9_consumer_its_entries_are_reclaimed_exactly_once(settings, echo_workers) -> None:
    messages = events(40)
    publish(settings, messages)
    slow = echo_workers("slow", sleep_s=30, concurrency=16)
    wait_until(lambda: pending(settings) == 16, 10, "the slow consumer to hold 16 entries")
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    echo_workers("rescuer", sleep_s=0)
    wait_until(lambda: len(output_ids(settings)) >= 40, 60, "all 40 outputs")
    time.sleep(0.5)
    handled = Counter(msg_id for msg_id, _ in output_ids(settings))
    assert set(handled) == {m.msg_id for m in messages}, "a message was lost"
    assert max(handled.values()) == 1, "a message had its effect twice"
    assert {consumer for _, consumer in output_ids(settings)} == {"rescuer"}
    wait_until(lambda: pending(settings) == 0, 10, "no pending entries")


def test_poison_entry_goes_to_dead_letter_after_max_deliveries(settings, echo_workers) -> None:
    good = events(20)
    poison = JobEvent(job_id="job-1", event="log", message="poison")
    publish(settings, [*good[:10], poison, *good[10:]])
    client = redis.Redis.from_url(settings.redis_url)
    client.xadd(f"{settings.key_prefix}:in", {KIND_FIELD: b"job_event", DATA_FIELD: b"not msgpack \xc1"})
    echo_workers("w")
    dead_stream = f"{settings.key_prefix}:in:dead"
    wait_until(lambda: client.xlen(dead_stream) == 2, 30, "two dead letters")
    wait_until(lambda: len(output_ids(settings)) == 20, 10, "the 20 good messages")
    dead = {fields[b"error"].decode(): fields for _, fields in client.xrange(dead_stream)}
    [undecodable] = [e for e in dead if "not valid msgpack" in e]
    [refused] = [e for e in dead if "poison message refused" in e]
    assert dead[refused][b"deliveries"] == str(settings.max_deliveries).encode()
    assert JobEvent.from_wire(dead[refused][DATA_FIELD]).msg_id == poison.msg_id, "dead letter keeps the payload"
    assert undecodable
    wait_until(lambda: pending(settings) == 0, 10, "no pending entries")


def test_sigterm_drains_in_flight_work_without_loss(settings, echo_workers) -> None:
    messages = events(60)
    publish(settings, messages)
    first = echo_workers("first", sleep_s=1.0, concurrency=8)
    wait_until(lambda: pending(settings) == 8, 10, "8 entries in flight")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    done_by_first = len(output_ids(settings))
    assert done_by_first >= 8, "in-flight work was dropped instead of finished"
    assert pending(settings) == 0, "drained worker left unacknowledged entries"
    echo_workers("second", sleep_s=0)
    wait_until(lambda: len(output_ids(settings)) >= 60, 30, "all outputs")
    time.sleep(0.3)
    handled = Counter(msg_id for msg_id, _ in output_ids(settings))
    assert set(handled) == {m.msg_id for m in messages}
    assert max(handled.values()) == 1
