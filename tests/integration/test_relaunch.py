"""A learner killed mid-job is relaunched from its checkpoint, with backoff, up to the job's max_restarts."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from services.api import scheduler as scheduler_module
from services.api.launchers import LocalLauncher
from services.api.scheduler import RESTARTS, Scheduler
from services.api.store import JobStore
from services.config import Settings
from services.contracts import ContractError, JobSpec, JobState
from services.streams import Streams, connect

HERE = Path(__file__).resolve().parent


def run_job(settings: Settings, tmp_path: Path, max_restarts: int) -> tuple[JobState, list[str], Path, float]:
    """Run a 4-step job whose learner SIGKILLs itself after its first step in each of its first two launches."""

    async def go() -> tuple[JobState, list[str], Path, float]:
        streams = Streams(connect(settings), settings)
        store = JobStore(streams)
        launcher = LocalLauncher(tmp_path, "crashing_learner", env={"CRASH_LAUNCHES": "2", "CRASH_AFTER_STEP": "1"})
        scheduler = Scheduler(store, launcher)
        schedule = {"total_steps": 4, "max_restarts": max_restarts}
        spec = JobSpec.from_preset("paper-grpo", {"name": "crashy", "model": "m", "schedule": schedule})
        job = await store.create(spec)
        restarts = RESTARTS.labels(job.id)
        deadline = time.monotonic() + 60
        while not (record := await store.get(job.id)).state.terminal:
            assert time.monotonic() < deadline, f"job still {record.state.value}"
            await scheduler.tick()
            await asyncio.sleep(0.05)
        messages = [event.message for _, event in await store.events(job.id) if event.message]
        await streams.aclose()
        return record.state, messages, launcher.job_dir(job.id), restarts._value.get()

    return asyncio.run(go())


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    monkeypatch.setattr(scheduler_module, "RESTART_BACKOFF_S", (0.2, 0.4))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    for name, value in {"SEARCHR1_REDIS_URL": settings.redis_url, "SEARCHR1_KEY_PREFIX": settings.key_prefix}.items():
        monkeypatch.setenv(name, value)
    return settings


def test_killed_learner_is_relaunched_and_trains_each_step_once(fast_backoff: Settings, tmp_path: Path) -> None:
    state, messages, job_dir, restarts = run_job(fast_backoff, tmp_path, max_restarts=2)
    assert state is JobState.SUCCEEDED
    assert (job_dir / "trained.txt").read_text().split() == ["1", "2", "3", "4"], "each step once, in order"
    assert len((job_dir / "launches.txt").read_text().split()) == 3
    assert restarts == 2
    assert any("relaunching in 0.2 s (restart 1 of 2)" in m for m in messages)
    assert any("relaunching in 0.4 s (restart 2 of 2)" in m for m in messages), "the backoff doubles"
    assert "learner relaunched (restart 2 of 2)" in messages


def test_a_learner_out_of_restarts_fails_the_job(fast_backoff: Settings, tmp_path: Path) -> None:
    state, messages, job_dir, restarts = run_job(fast_backoff, tmp_path, max_restarts=1)
    assert state is JobState.FAILED
    assert "exited with code -9" in messages[-1]
    assert (job_dir / "trained.txt").read_text().split() == ["1", "2"]
    assert restarts == 1


def test_max_restarts_is_validated() -> None:
    with pytest.raises(ContractError, match="max_restarts"):
        JobSpec.from_preset("paper-grpo", {"model": "m", "schedule": {"max_restarts": -1}})
