"""Prometheus label values come from messages: a job id that is too long or could leave its Redis key namespace
is refused by the contract, so the real reward worker dead-letters it instead of growing `/metrics`."""

from __future__ import annotations

import asyncio

import msgpack
from prometheus_client import REGISTRY, generate_latest
from test_reward_worker import CASES, dead_letters_once_scored, trajectory

from services.config import Settings
from services.streams import DATA_FIELD, KIND_FIELD, Streams

BAD_IDS = ["j" * 100_000, "job:1:scored", "job id with spaces"]


def test_oversized_or_odd_job_ids_are_dead_lettered_not_labelled(settings: Settings) -> None:
    good = [trajectory(*CASES[0][:3], job="job") for _ in range(4)]

    async def publish(streams: Streams) -> None:
        await streams.publish_many(streams.reward, good)
        for job_id in BAD_IDS:  # as a producer that skipped validation would write it
            payload = {**good[0].model_dump(mode="python"), "job_id": job_id, "msg_id": job_id[:20] + "x"}
            await streams.redis.xadd(
                streams.reward, {KIND_FIELD: b"trajectory", DATA_FIELD: msgpack.packb(payload, use_bin_type=True)}
            )

    dead = asyncio.run(dead_letters_once_scored(settings, publish, n_scored=4, n_dead=len(BAD_IDS)))
    errors = [fields[b"error"].decode() for fields in dead]
    assert sum("Trajectory.job_id: String should have at most 128 characters" in e for e in errors) == 1, errors
    assert sum("Trajectory.job_id: String should match pattern" in e for e in errors) == 2, errors
    assert all(len(e) < 1000 for e in errors), "the error does not repeat the id"
    metrics = generate_latest(REGISTRY).decode()
    assert 'job="job"' in metrics
    assert not any(job_id[:50] in metrics for job_id in BAD_IDS)
