"""Prometheus label values come from messages: a job id that is too long or could leave its Redis key namespace
is refused by the contract, so the real reward worker dead-letters it instead of growing `/metrics`."""

from __future__ import annotations

import asyncio

import msgpack
from prometheus_client import REGISTRY, generate_latest
from test_reward_worker import CASES, scored, trajectory

from reward.worker import RewardSettings, build_worker
from services.config import Settings
from services.streams import DATA_FIELD, KIND_FIELD, Streams, connect

BAD_IDS = ["j" * 100_000, "job:1:scored", "job id with spaces"]


def test_oversized_or_odd_job_ids_are_dead_lettered_not_labelled(settings: Settings) -> None:
    reward_settings = RewardSettings(**settings.model_dump())
    good = [trajectory(*CASES[0][:3], job="job") for _ in range(4)]

    async def go() -> list[dict]:
        streams = Streams(connect(reward_settings), reward_settings)
        worker = build_worker(streams, reward_settings)
        task = asyncio.create_task(worker.run())
        await streams.publish_many(streams.reward, good)
        for job_id in BAD_IDS:  # as a producer that skipped validation would write it
            payload = {**good[0].model_dump(mode="python"), "job_id": job_id, "msg_id": job_id[:20] + "x"}
            await streams.redis.xadd(
                streams.reward, {KIND_FIELD: b"trajectory", DATA_FIELD: msgpack.packb(payload, use_bin_type=True)}
            )
        dead_stream = streams.dead_letter_stream(streams.reward)
        while len(scored(settings, "job")) < 4 or await streams.redis.xlen(dead_stream) < len(BAD_IDS):
            await asyncio.sleep(0.05)
        worker.request_stop()
        await task
        dead = [fields for _, fields in await streams.redis.xrange(dead_stream)]
        await streams.redis.aclose()
        return dead

    dead = asyncio.run(go())
    errors = [fields[b"error"].decode() for fields in dead]
    assert sum("Trajectory.job_id: String should have at most 128 characters" in e for e in errors) == 1, errors
    assert sum("Trajectory.job_id: String should match pattern" in e for e in errors) == 2, errors
    assert all(len(e) < 1000 for e in errors), "the error does not repeat the id"
    metrics = generate_latest(REGISTRY).decode()
    assert 'job="job"' in metrics
    assert not any(job_id[:50] in metrics for job_id in BAD_IDS)
