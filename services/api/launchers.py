"""Launchers start a job's learner by entrypoint (a module path and arguments), never by import.

`LocalLauncher` runs it as a local process group (the embedded platform); the KubeRay launcher submits a RayJob.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.contracts import JobState
from services.processes import pid_alive, stop_group

from .admission import Capacity
from .store import JobRecord

DEFAULT_ENTRYPOINT = "trainer.train"
# The API's own secrets: a learner never calls the API, so it does not get them.
API_ONLY_ENV = frozenset({"SEARCHR1_API_TOKEN"})


@dataclass(frozen=True)
class LaunchStatus:
    """What the launcher can see of a learner: still running, or ended in a terminal state."""

    state: JobState
    message: str = ""


class Launcher(Protocol):
    name: str
    capacity: Capacity | None  # what one learner can have, when the launcher knows (None: the cluster decides)
    relaunches: bool  # the scheduler relaunches a learner that died; False: the cluster retries it by itself

    async def start(self, job: JobRecord) -> dict[str, Any]:
        """Start the learner; returns a JSON-able handle stored with the job."""
        ...

    async def poll(self, job: JobRecord) -> LaunchStatus: ...

    async def cancel(self, job: JobRecord) -> None: ...


class LocalLauncher:
    """Learners as local processes, each in its own session so cancel ends the whole process tree."""

    name = "local"
    relaunches = True

    def __init__(
        self,
        work_dir: Path,
        entrypoint: str = DEFAULT_ENTRYPOINT,
        env: dict[str, str] | None = None,
        capacity: Capacity | None = None,
    ):
        self.work_dir = work_dir
        self.entrypoint = entrypoint
        self.env = env or {}
        self.capacity = capacity or Capacity.of_this_machine()
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def job_dir(self, job_id: str) -> Path:
        return self.work_dir / "jobs" / job_id

    async def start(self, job: JobRecord) -> dict[str, Any]:
        job_dir = self.job_dir(job.id)
        job_dir.mkdir(parents=True, exist_ok=True)
        spec_file = job_dir / "job.json"
        spec_file.write_text(json.dumps(job.spec.model_dump(mode="json"), indent=2))
        log_file = job_dir / "learner.log"
        command = [sys.executable, "-m", self.entrypoint, "--job", str(spec_file), "--job-id", job.id,
                   "--output-dir", str(job_dir)]  # fmt: skip
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**{k: v for k, v in os.environ.items() if k not in API_ONLY_ENV}, **self.env},
                start_new_session=True,
            )
        self._children[job.id] = process
        return {"pid": process.pid, "log": str(log_file), "output_dir": str(job_dir), "command": command}

    async def poll(self, job: JobRecord) -> LaunchStatus:
        process = self._children.get(job.id)
        if process is None:  # started by an earlier API process: all we can check is the pid
            pid = int(job.handle.get("pid", 0))
            if pid and pid_alive(pid):
                return LaunchStatus(JobState.RUNNING)
            return LaunchStatus(JobState.FAILED, "learner process is gone (the API restarted while it ran)")
        code = process.poll()
        if code is None:
            return LaunchStatus(JobState.RUNNING)
        del self._children[job.id]
        if code == 0:
            return LaunchStatus(JobState.SUCCEEDED)
        return LaunchStatus(JobState.FAILED, f"learner exited with code {code}; see {job.handle.get('log')}")

    async def cancel(self, job: JobRecord) -> None:
        pid = int(job.handle.get("pid", 0))
        if not pid:
            return
        process = self._children.pop(job.id, None)
        await asyncio.to_thread(stop_group, pid, 10.0, process.poll if process is not None else None)
        if process is not None:
            process.wait()
