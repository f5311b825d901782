"""The rollout tier's queue worker with a real engine (HF, tiny model), a Search-R1 retriever on loopback and
real Redis: requests in, trajectories out; weights announced by a job are loaded before its requests run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from support import fake_retriever

from rollout.engines.hf import HFEngine
from rollout.worker import WEIGHT_LOADS, RolloutSettings, RolloutWorker
from rollout.worker import WEIGHTS_REFUSED as REFUSED
from services.config import Settings
from services.contracts import EpisodeConfig, JobEvent, RolloutRequest, Trajectory, weights_folder
from services.models import resolve_model
from services.prompts import build_prompt_ids
from services.streams import Streams, connect
from trainer.weights import save_version

DOCS = [("1", '"Paris"\nParis is the capital of France.'), ("2", '"Lyon"\nLyon is a city in France.')]


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine(resolve_model("tiny-random-qwen2"), max_model_len=512)


def request(engine: HFEngine, job: str, version: int, n: int = 2) -> RolloutRequest:
    prompt = build_prompt_ids(engine.tokenizer, "what is the capital of France")
    return RolloutRequest(
        job_id=job, prompt_uid="nq:1", prompt_ids=np.asarray(prompt), n_samples=n, policy_version=version,
        golden_answers=["Paris"], data_source="nq:test:x",
        episode=EpisodeConfig(max_turns=2, max_context_tokens=512, max_prompt_tokens=488, max_tokens_per_turn=24),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, engine: HFEngine, retriever_url: str, concurrency: int
) -> AsyncIterator[tuple[RolloutWorker, Streams]]:
    """A rollout worker consuming the queue on `engine`, stopped and closed on exit; a `reward` group to read."""
    worker = RolloutWorker(
        RolloutSettings(**settings.model_dump(), engine="hf", retriever_url=retriever_url, concurrency=concurrency),
        engine,
    )
    streams = Streams(connect(settings), settings)
    await streams.ensure_group(streams.reward, "reward")
    task = asyncio.create_task(worker.run())
    try:
        yield worker, streams
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)
        await worker.close()


def test_requests_become_trajectories_and_new_versions_are_loaded_first(
    engine: HFEngine, settings: Settings, tmp_path: Path
) -> None:
    async def scenario() -> tuple[list[Trajectory], int, list[str]]:
        with fake_retriever(DOCS) as retriever:
            async with serving(settings, engine, retriever["url"], concurrency=4) as (worker, streams):
                trajectories = await first_job_run(worker, streams, tmp_path)
            return trajectories, worker.engine.version, [r["queries"] for r in retriever["requests"]]

    trajectories, engine_version, _ = asyncio.run(scenario())
    assert len(trajectories) == 5
    by_version = sorted(t.oldest_version for t in trajectories)
    assert by_version == [0, 0, 0, 1, 1] and engine_version == 1
    for trajectory in trajectories:
        assert trajectory.job_id == "job-a" and trajectory.golden_answers == ["Paris"]
        assert trajectory.response_ids.size == trajectory.loss_mask.size == trajectory.logprobs.size
        model = trajectory.loss_mask.astype(bool)
        assert np.isfinite(trajectory.logprobs[model]).all() and (trajectory.logprobs[~model] == 0).all()
        assert trajectory.turns >= 1
        assert trajectory.response_text == engine.tokenizer.decode(trajectory.response_ids.tolist())


async def first_job_run(worker: RolloutWorker, streams: Streams, tmp_path: Path) -> list[Trajectory]:
    """Three samples at version 0, then v1 announced and two samples asked at version 1."""
    engine = worker.engine
    assert isinstance(engine, HFEngine)
    await streams.publish(streams.rollout, request(engine, "job-a", version=0, n=3))
    # The learner announces v1 before asking for it; the worker must load it before sampling.
    announced = save_version(engine.model, engine.tokenizer, tmp_path, "job-a", 1, step=1)
    await streams.publish(streams.job("job-a", "weights"), announced)
    await streams.publish(streams.rollout, request(engine, "job-a", version=1, n=2))
    trajectories: list[Trajectory] = []
    for _ in range(600):
        entries = await streams.read(streams.reward, "reward", "test", Trajectory, count=10, block_ms=100)
        trajectories += [e.message for e in entries]
        if len(trajectories) >= 5:
            break
    return trajectories


def test_announced_versions_are_loaded_at_once_and_a_corrupted_one_is_refused_and_reported(
    settings: Settings, tmp_path: Path
) -> None:
    """No request asks for v1 or v2: the replica follows the job's weights stream. v1 is loaded as soon as it is
    announced; v2's files differ from its checksum, so it is refused, counted and reported, and v1 stays."""
    engine = HFEngine(resolve_model("tiny-random-qwen2"), max_model_len=512)  # its own: engines bind to one loop

    async def scenario() -> tuple[list[int], list[JobEvent]]:
        with fake_retriever(DOCS) as retriever:
            async with serving(settings, engine, retriever["url"], concurrency=2) as (worker, streams):
                return await pushed_and_refused(worker, streams, tmp_path)

    loads_before = WEIGHT_LOADS.labels("job-p")._value.get()
    versions, events = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert versions == [0, 1, 1], "v1 pushed and loaded with no request asking for it; the corrupted v2 not"
    assert WEIGHT_LOADS.labels("job-p")._value.get() - loads_before == 1
    [report] = [e for e in events if e.event == "log"]
    assert "refused weights v2" in report.message and "do not match their checksum" in report.message


async def pushed_and_refused(
    worker: RolloutWorker, streams: Streams, tmp_path: Path
) -> tuple[list[int], list[JobEvent]]:
    """The engine's version after the job's first request, after v1's announcement, after a corrupted v2's; and
    the job's events."""
    engine = worker.engine
    assert isinstance(engine, HFEngine)
    await streams.publish(streams.rollout, request(engine, "job-p", version=0, n=1))  # the job's first
    await streams.read(streams.reward, "reward", "test", Trajectory, count=1, block_ms=60_000)
    versions = [worker.engine.version]
    weights = streams.job("job-p", "weights")
    await streams.publish(weights, save_version(engine.model, engine.tokenizer, tmp_path, "job-p", 1, step=1))
    versions.append(await version_after(worker, lambda v: v == 1))
    corrupted = save_version(engine.model, engine.tokenizer, tmp_path, "job-p", 2, step=2)
    with (weights_folder(corrupted.uri) / "model.safetensors").open("r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00" * 8)
    await streams.publish(weights, corrupted)
    while REFUSED.labels("job-p")._value.get() < 1:
        await asyncio.sleep(0.05)
    versions.append(worker.engine.version)
    found = [e.message for e in await streams.entries(streams.job("job-p", "events"), JobEvent)]
    return versions, [e for e in found if e is not None]


async def version_after(worker: RolloutWorker, done: Callable[[int], bool], timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while not done(worker.engine.version) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return worker.engine.version
