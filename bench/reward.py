"""Reward tier throughput: scored trajectories/s of one worker process, end to end through Redis.

The baseline is the same scoring done in-process with no Redis (the ceiling the worker could reach), measured
in the same run on the same trajectories; the ratio says what the bus and the runtime cost.

    python -m bench.reward [--trajectories 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid

import numpy as np

from reward.worker import score_trajectory
from searchr1.redis_server import DEFAULT_URL, PrivateRedis, answers
from services.config import Settings
from services.contracts import RewardConfig, Trajectory
from services.streams import Streams, connect

RESPONSE_TOKENS = 1024


def sample_trajectories(count: int) -> list[Trajectory]:
    """Trajectories shaped like real ones: two searches with passages, then an answer (right half the time)."""
    rng = np.random.default_rng(0)
    passage = "Doc 1(Title: Paris) Paris is the capital and most populous city of France. " * 6
    trajectories = []
    for i in range(count):
        answer = "Paris" if i % 2 else "Lyon"
        text = (
            "<think>I need the capital of France.</think><search>capital of France</search>"
            f"\n\n<information>{passage}</information>\n\n<think>It says Paris.</think>"
            f"<search>France capital city</search>\n\n<information>{passage}</information>\n\n"
            f"<think>Confirmed.</think><answer>{answer}</answer>"
        )
        trajectories.append(
            Trajectory(
                job_id="bench",
                request_id=uuid.uuid4().hex,
                prompt_uid=f"q{i}",
                prompt_ids=rng.integers(0, 150_000, 256),
                response_ids=rng.integers(0, 150_000, RESPONSE_TOKENS),
                loss_mask=np.ones(RESPONSE_TOKENS, dtype=np.uint8),
                logprobs=np.zeros(RESPONSE_TOKENS, dtype=np.float32),
                response_text=text,
                golden_answers=["Paris", "City of Light"],
                data_source="nq:test:bench",
                reward=RewardConfig(kind="em_format" if i % 3 == 0 else "em"),
            )
        )
    return trajectories


def in_process_rate(trajectories: list[Trajectory]) -> float:
    start = time.perf_counter()
    for trajectory in trajectories:
        score_trajectory(trajectory)
    return len(trajectories) / (time.perf_counter() - start)


def end_to_end_rate(settings: Settings, trajectories: list[Trajectory]) -> float:
    """Publish everything, start one worker process, time until the last scored trajectory lands."""

    async def publish() -> Streams:
        streams = Streams(connect(settings), settings)
        await streams.ensure_group(streams.reward, "reward")
        for start in range(0, len(trajectories), 500):
            await streams.publish_many(streams.reward, trajectories[start : start + 500])
        return streams

    async def wait_scored(streams: Streams, target: int) -> float:
        scored_stream = streams.job("bench", "scored")
        first = None
        while True:
            length = await streams.redis.xlen(scored_stream)
            if length and first is None:
                first = time.perf_counter()
            if length >= target:
                return time.perf_counter()
            await asyncio.sleep(0.01)

    async def run() -> float:
        streams = await publish()
        env = dict(os.environ, SEARCHR1_REDIS_URL=settings.redis_url, SEARCHR1_KEY_PREFIX=settings.key_prefix)
        worker = subprocess.Popen([sys.executable, "-m", "reward.worker"], env=env)
        try:
            # The clock starts at the first scored entry, so process start-up is not counted.
            scored_stream = streams.job("bench", "scored")
            while not await streams.redis.xlen(scored_stream):
                await asyncio.sleep(0.005)
            start = time.perf_counter()
            already = await streams.redis.xlen(scored_stream)
            end = await wait_scored(streams, len(trajectories))
            return (len(trajectories) - already) / (end - start)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            keys = [k async for k in streams.redis.scan_iter(match=f"{settings.key_prefix}*")]
            for key in keys:
                await streams.redis.delete(key)
            await streams.redis.aclose()

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=20_000)
    args = parser.parse_args()
    private = None if answers(DEFAULT_URL) else PrivateRedis().start()
    url = private.url if private else DEFAULT_URL
    try:
        settings = Settings(redis_url=url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}")
        trajectories = sample_trajectories(args.trajectories)
        print(f"trajectory on the wire: {len(trajectories[0].to_wire())} bytes ({RESPONSE_TOKENS} response tokens)")
        baseline = in_process_rate(trajectories)
        print(f"baseline  scoring in-process, no Redis: {baseline:,.0f} trajectories/s")
        ours = end_to_end_rate(settings, trajectories)
        print(f"searchr1  one reward worker process, Redis in and out: {ours:,.0f} trajectories/s")
        print(f"ratio     end-to-end / in-process = {ours / baseline:.2f}")
    finally:
        if private is not None:
            private.stop()


if __name__ == "__main__":
    main()
