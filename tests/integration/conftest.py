"""Fixtures for integration tests: a real jobs API process on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import TOKEN, ApiServer

from searchr1.redis_server import free_port

HERE = Path(__file__).resolve().parent


@pytest.fixture
def api(worker_env: dict[str, str], tmp_path: Path) -> Iterator[ApiServer]:
    env = dict(
        worker_env,
        SEARCHR1_PORT=str(free_port()),
        SEARCHR1_API_TOKEN=TOKEN,
        SEARCHR1_LEARNER_ENTRYPOINT="fake_learner",
        SEARCHR1_WORK_DIR=str(tmp_path),
        SEARCHR1_SCHEDULER_INTERVAL_S="0.2",
        # The stand-in learner takes no CPU or GPU: a paper-sized machine lets these tests submit the paper presets.
        SEARCHR1_LEARNER_CPUS="8",
        SEARCHR1_LEARNER_GPUS="8",
        PYTHONPATH=os.pathsep.join([str(HERE), worker_env["PYTHONPATH"]]),
    )
    server = ApiServer(env)
    server.start()
    yield server
    server.stop()
