"""The reward worker against a real Redis: scores flow to each job's stream, poison goes to dead letters."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
import numpy as np
import pytest
import redis
from support import wait_until

from reward.worker import RewardSettings, build_worker
from searchr1.redis_server import free_port
from services.config import Settings
from services.contracts import RewardConfig, ScoredTrajectory, Trajectory
from services.streams import DATA_FIELD, KIND_FIELD, Streams, connect

CASES = [  # (response, golds, kind, expected reward)
    ("<think>x</think><answer>Paris</answer>", ["paris"], "em", 1.0),
    ("<think>x</think><answer>Lyon</answer>", ["paris"], "em", 0.0),
    ("<answer>The Paris!</answer>", ["paris"], "em", 1.0),
    ("no answer at all", ["paris"], "em", 0.0),
    ("<think>x</think><answer>Paris</answer>", ["paris"], "em_format", 1.0),
    ("<answer>Paris</answer>", ["paris"], "em_format", 0.8),
    ("<think>x</think><answer>Lyon</answer>", ["paris"], "em_format", 0.2),
    ("<think>a</think><answer>Paris France</answer>", ["paris"], "f1", 2 / 3),
]


def trajectory(response: str, golds: list[str], kind: str, job: str, source: str = "nq:test:x") -> Trajectory:
    n = 3
    return Trajectory(
        job_id=job,
        request_id="r",
        prompt_uid="p",
        prompt_ids=np.arange(4),
        response_ids=np.arange(n),
        loss_mask=np.ones(n, dtype=np.uint8),
        logprobs=np.zeros(n),
        response_text=response,
        golden_answers=golds,
        data_source=source,
        reward=RewardConfig(kind=kind),
    )


def scored(settings: Settings, job: str) -> list[ScoredTrajectory]:
    client = redis.Redis.from_url(settings.redis_url)
    rows = client.xrange(f"{settings.key_prefix}:job:{job}:scored")
    return [ScoredTrajectory.from_wire(fields[DATA_FIELD]) for _, fields in rows]


def test_worker_scores_a_batch_and_routes_each_job(settings: Settings) -> None:
    reward_settings = RewardSettings(**settings.model_dump())
    sent = [trajectory(r, g, k, job=f"job-{i % 2}") for i, (r, g, k, _) in enumerate(CASES * 5)]
    expected = {t.msg_id: CASES[i % len(CASES)][3] for i, t in enumerate(sent)}

    async def go() -> None:
        streams = Streams(connect(reward_settings), reward_settings)
        worker = build_worker(streams, reward_settings)
        task = asyncio.create_task(worker.run())
        await streams.publish_many(streams.reward, sent)
        while sum(len(scored(settings, f"job-{j}")) for j in (0, 1)) < len(sent):
            await asyncio.sleep(0.05)
        worker.request_stop()
        await task
        stats = await streams.stats(streams.reward, "reward")
        assert stats.pending == 0 and stats.lag == 0
        await streams.redis.aclose()

    asyncio.run(go())
    results = scored(settings, "job-0") + scored(settings, "job-1")
    assert len(results) == len(sent)
    for result in results:
        assert result.trajectory.job_id in ("job-0", "job-1")
        assert result.reward == pytest.approx(expected[result.trajectory.msg_id])
    answered = [r for r in results if r.trajectory.response_text.startswith("<think>x</think><answer>Paris")]
    assert all(r.extracted_answer == "Paris" and r.format_valid for r in answered)


async def dead_letters_once_scored(
    settings: Settings, publish: Callable[[Streams], Awaitable[object]], n_scored: int, n_dead: int
) -> list[dict[bytes, bytes]]:
    """Run the real reward worker, let `publish` write to its stream, and wait (30 s at most) until job "job" has
    `n_scored` scored trajectories and the stream `n_dead` dead letters; returns the dead letters' fields."""
    reward_settings = RewardSettings(**settings.model_dump())
    streams = Streams(connect(reward_settings), reward_settings)
    worker = build_worker(streams, reward_settings)
    task = asyncio.create_task(worker.run())
    await publish(streams)
    dead_stream = streams.dead_letter_stream(streams.reward)
    deadline = time.monotonic() + 30
    while len(scored(settings, "job")) < n_scored or await streams.redis.xlen(dead_stream) < n_dead:
        assert time.monotonic() < deadline, f"not {n_scored} scored and {n_dead} dead letters within 30 s"
        await asyncio.sleep(0.05)
    worker.request_stop()
    await task
    dead = [fields for _, fields in await streams.redis.xrange(dead_stream)]
    await streams.redis.aclose()
    return dead


def test_poison_trajectories_go_to_dead_letters_while_the_rest_flow(settings: Settings) -> None:
    good = [trajectory(*CASES[0][:3], job="job") for _ in range(10)]
    no_golds = trajectory("<answer>x</answer>", [], "em", job="job")

    async def publish(streams: Streams) -> None:
        await streams.publish_many(streams.reward, [*good[:5], no_golds, *good[5:]])
        await streams.redis.xadd(streams.reward, {KIND_FIELD: b"trajectory", DATA_FIELD: b"\x93broken"})

    dead = asyncio.run(dead_letters_once_scored(settings, publish, n_scored=10, n_dead=2))
    errors = sorted(fields[b"error"].decode() for fields in dead)
    assert any("has no golden answers" in e for e in errors), errors
    assert any("Trajectory" in e for e in errors), errors
    assert len(scored(settings, "job")) == 10


def _metric_total(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_two_worker_processes_share_the_queue_and_serve_health_and_metrics(worker_env, settings) -> None:
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "reward.worker"],
            env=dict(worker_env, SEARCHR1_METRICS_PORT=str(port)),
            cwd=os.getcwd(),
        )
        for port in ports
    ]
    try:
        for port in ports:
            wait_until(lambda p=port: _ready(p), 30, f"worker on {port} to be ready")
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        sent = [trajectory(*CASES[i % len(CASES)][:3], job="shared") for i in range(2000)]

        async def publish() -> None:
            streams = Streams(connect(settings), settings)
            await streams.publish_many(streams.reward, sent)
            await streams.redis.aclose()

        asyncio.run(publish())
        wait_until(lambda: len(scored(settings, "shared")) >= len(sent), 60, "all trajectories scored")
        time.sleep(0.3)
        ids = [s.trajectory.msg_id for s in scored(settings, "shared")]
        assert sorted(ids) == sorted(t.msg_id for t in sent), "lost or duplicated trajectories"
        per_worker = [
            _metric_total(httpx.get(f"http://127.0.0.1:{p}/metrics/", timeout=5).text, "searchr1_reward_scored_total")
            for p in ports
        ]
        assert sum(per_worker) == len(sent) and min(per_worker) > 0, per_worker
        for process in processes:
            process.terminate()
        assert [process.wait(timeout=20) for process in processes] == [0, 0]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
