"""Trajectory throughput through the kernel's streams, beside redis-benchmark's raw XADD of the same size.

One producer process publishes 4096-token trajectories (pipelined batches, with back-pressure on the group's
lag); two consumer processes read them in a consumer group, decode each one fully and acknowledge in batches.
The baseline is `redis-benchmark` doing bare XADDs of a payload of the same byte size, measured in this run.

    python -m bench.streams [--messages 20000] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import multiprocessing as mp
import shutil
import subprocess
import sys
import time
import uuid
from urllib.parse import urlparse

import numpy as np
import redis

from searchr1.redis_server import DEFAULT_URL, PrivateRedis, answers
from services.config import Settings
from services.contracts import Trajectory, VersionSpan
from services.streams import Streams, connect

GROUP = "bench"
PUBLISH_BATCH = 50
MAX_LAG = 2_000


def trajectory_4096(seed: int = 0) -> Trajectory:
    """A realistic 4096-token trajectory: 512 prompt tokens, 3584 response tokens, ~4 characters per token."""
    rng = np.random.default_rng(seed)
    response_len = 3584
    return Trajectory(
        job_id="bench",
        request_id=uuid.uuid4().hex,
        prompt_uid=f"bench:{seed}",
        prompt_ids=rng.integers(0, 151_000, 512),
        response_ids=rng.integers(0, 151_000, response_len),
        loss_mask=(rng.random(response_len) < 0.7).astype(np.uint8),
        logprobs=-rng.random(response_len).astype(np.float32),
        version_spans=[VersionSpan(start=0, end=response_len, version=1)],
        response_text="".join(rng.choice(list("abcdefghij <>/"), 4 * response_len)),
        golden_answers=["an answer"],
    )


def _produce(settings: Settings, stream: str, count: int) -> None:
    async def go() -> None:
        streams = Streams(connect(settings), settings)
        template = trajectory_4096()
        for start in range(0, count, PUBLISH_BATCH):
            batch = [template.model_copy(update={"msg_id": uuid.uuid4().hex}) for _ in range(PUBLISH_BATCH)]
            await streams.publish_many(stream, batch[: count - start])
            if (start // PUBLISH_BATCH) % 10 == 9:
                await streams.wait_for_room(stream, GROUP, MAX_LAG, timeout_s=60)
        await streams.redis.aclose()

    asyncio.run(go())


def _consume(settings: Settings, stream: str, name: str, done: mp.Value, total: int) -> None:
    async def go() -> None:
        streams = Streams(connect(settings), settings)
        while done.value < total:
            entries = await streams.read(stream, GROUP, name, Trajectory, count=100, block_ms=200)
            if not entries:
                continue
            assert all(entry.message is not None for entry in entries), "a trajectory failed to decode"
            await streams.ack(stream, GROUP, [entry.entry_id for entry in entries])
            with done.get_lock():
                done.value += len(entries)
        await streams.redis.aclose()

    asyncio.run(go())


def measure_pipeline(settings: Settings, count: int) -> float:
    """Seconds from the first publish to the last acknowledgement of `count` trajectories."""
    stream = f"{settings.key_prefix}:bench"
    asyncio.run(_ensure_group(settings, stream))
    ctx = mp.get_context("spawn")
    done = ctx.Value("i", 0)
    consumers = [ctx.Process(target=_consume, args=(settings, stream, f"c{i}", done, count)) for i in range(2)]
    for process in consumers:
        process.start()
    time.sleep(1.0)  # let the consumers import and connect before the clock starts
    start = time.perf_counter()
    producer = ctx.Process(target=_produce, args=(settings, stream, count))
    producer.start()
    producer.join()
    for process in consumers:
        process.join()
    elapsed = time.perf_counter() - start
    if done.value != count or producer.exitcode or any(p.exitcode for p in consumers):
        raise RuntimeError(f"pipeline incomplete: {done.value}/{count} acknowledged")
    redis.Redis.from_url(settings.redis_url).delete(stream)
    return elapsed


async def _ensure_group(settings: Settings, stream: str) -> None:
    streams = Streams(connect(settings), settings)
    await streams.ensure_group(stream, GROUP)
    await streams.redis.aclose()


def redis_benchmark_xadd(url: str, payload_bytes: int, requests: int, pipeline: int) -> float:
    """Raw XADDs per second of a payload of `payload_bytes`, one client, as redis-benchmark measures them."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise FileNotFoundError("redis-benchmark not found: apt-get install redis-tools")
    parsed = urlparse(url)
    key = f"bench-raw-{uuid.uuid4().hex[:8]}"
    command = [
        binary, "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379), "-c", "1",
        "-n", str(requests), "-P", str(pipeline), "--csv",
        "XADD", key, "MAXLEN", "~", "1000", "*", "d", "x" * payload_bytes,
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout
    redis.Redis.from_url(url).delete(key)
    rows = [row for row in csv.reader(io.StringIO(output)) if row and row[0] != "test"]
    return float(rows[-1][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()

    private = None
    url = args.redis_url or DEFAULT_URL
    if not answers(url):
        private = PrivateRedis().start()
        url = private.url
    try:
        settings = Settings(redis_url=url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}", stream_maxlen=200_000)
        payload_bytes = len(trajectory_4096().to_wire())
        print(f"trajectory on the wire: {payload_bytes} bytes (4096 tokens)")
        raw = max(redis_benchmark_xadd(url, payload_bytes, 10_000, pipeline) for pipeline in (1, 16))
        print(f"baseline  redis-benchmark XADD {payload_bytes} B, best of pipeline 1/16: {raw:,.0f} msg/s")
        seconds = measure_pipeline(settings, args.messages)
        rate = args.messages / seconds
        mb_s = rate * payload_bytes / 1e6
        print(
            f"searchr1  publish -> consume (2 consumers, full decode) -> ack: {rate:,.0f} trajectories/s, "
            f"{mb_s:,.1f} MB/s ({args.messages} in {seconds:.2f}s)"
        )
        print(f"ratio     searchr1 / raw XADD = {rate / raw:.2f}  (targets: >= 3000 msg/s and >= 0.25)")
    finally:
        if private is not None:
            private.stop()


if __name__ == "__main__":
    sys.exit(main())
