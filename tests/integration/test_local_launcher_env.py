"""The local launcher starts a real learner process: it gets the platform's settings but not the API's token."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from services.api.launchers import LocalLauncher
from services.api.store import JobRecord
from services.contracts import JobSpec, JobState

HERE = Path(__file__).resolve().parent


def test_learners_do_not_get_the_api_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCHR1_API_TOKEN", "api-secret")
    monkeypatch.setenv("SEARCHR1_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    spec = JobSpec.from_preset("paper-grpo", {"name": "env", "model": "m", "resources": {"learner_workers": 1}})
    job = JobRecord(id="env-0123abcd", spec=spec, state=JobState.STARTING, created_at=time.time(),
                    updated_at=time.time())  # fmt: skip
    launcher = LocalLauncher(tmp_path, "env_learner")
    handle = asyncio.run(launcher.start(job))
    deadline = time.monotonic() + 30
    while asyncio.run(launcher.poll(job)).state is JobState.RUNNING:
        assert time.monotonic() < deadline, "the learner did not finish"
        time.sleep(0.05)
    env = json.loads((Path(handle["output_dir"]) / "env.json").read_text())
    assert "SEARCHR1_API_TOKEN" not in env
    assert env["SEARCHR1_REDIS_URL"] == "redis://127.0.0.1:6379/0", "the platform's settings still reach it"
