"""Admission and supervision of jobs: at most `max_running` learners at once, the rest wait in FIFO order.

Each tick: follow the events of active jobs (a learner reports RUNNING, progress, checkpoints and its end
through its job's events stream), notice learners that ended without saying so, and admit queued jobs while
there is room. A learner that died without reporting its end is relaunched (it resumes from its last
checkpoint) after a doubling backoff, up to the job's `schedule.max_restarts`, when the launcher leaves
relaunching to us (the KubeRay launcher hands the same limit to the RayJob instead).
Every state change goes through the store's checked transitions, so ticks are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from services.contracts import JobEvent, JobState
from services.telemetry import counter, gauge

from .launchers import Launcher
from .store import ALLOWED, IllegalTransition, JobNotFound, JobRecord, JobStore

log = logging.getLogger(__name__)

JOBS = gauge("searchr1_jobs", "Training jobs by state", ["state"])
RESTARTS = counter("searchr1_job_restarts_total", "Learners relaunched after dying mid-job", ["job"])
ACTIVE = (JobState.STARTING, JobState.RUNNING)
RESTART_BACKOFF_S = (1.0, 60.0)  # first wait, cap: doubled for each further relaunch of the same job


class Scheduler:
    def __init__(
        self,
        store: JobStore,
        launcher: Launcher,
        max_running: int = 1,
        interval_s: float = 1.0,
        retention_s: float | None = None,
    ):
        if max_running < 1:
            raise ValueError("max_running must be at least 1")
        self.store = store
        self.launcher = launcher
        self.max_running = max_running
        self.interval_s = interval_s
        self.retention_s = retention_s  # ended jobs created longer ago are deleted; None: kept
        self._cursors: dict[str, str] = {}
        self._relaunch_at: dict[str, float] = {}  # job id -> monotonic time its dead learner is relaunched
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def tick(self) -> None:
        active = [job for state in ACTIVE for job in (await self.store.list(state, limit=10_000))[0]]
        for job in active:
            await self._follow_events(job)
            await self._check_launch(job)
        self._cursors = {job.id: self._cursors[job.id] for job in active if job.id in self._cursors}  # ended: forgotten
        self._relaunch_at = {job.id: self._relaunch_at[job.id] for job in active if job.id in self._relaunch_at}
        running = sum(1 for job in await self._refresh(active) if job.state in ACTIVE)
        for job_id in await self.store.queued():
            if running >= self.max_running:
                break
            if await self._admit(job_id):
                running += 1
        if self.retention_s is not None:
            expired = await self.store.expire(time.time() - self.retention_s)
            if expired:
                log.info("deleted %d ended jobs past the retention of %g s: %s", len(expired), self.retention_s,
                         ", ".join(expired[:10]))  # fmt: skip
        await self._export_counts()

    async def cancel(self, job_id: str) -> JobRecord:
        job = await self.store.get(job_id)
        if job.state.terminal:
            raise IllegalTransition(f"job {job_id} already ended as {job.state.value}")
        await self.store.transition(job_id, JobState.CANCELLED, message="cancelled by request")
        if job.state in ACTIVE:
            await self.launcher.cancel(job)
        return await self.store.get(job_id)

    async def _refresh(self, jobs: list[JobRecord]) -> list[JobRecord]:
        fresh = []
        for job in jobs:
            with contextlib.suppress(JobNotFound):
                fresh.append(await self.store.get(job.id))
        return fresh

    async def _admit(self, job_id: str) -> bool:
        try:
            await self.store.transition(job_id, JobState.STARTING, launcher=self.launcher.name)
        except (IllegalTransition, JobNotFound):
            return False  # cancelled meanwhile, or taken by another API replica
        try:
            job = await self.store.get(job_id)
        except JobNotFound:  # deleted meanwhile, or its record is unreadable (the store quarantined it)
            return False
        try:
            handle = await self.launcher.start(job)
        except Exception as exc:
            log.exception("launching %s failed", job_id)
            await self.store.transition(job_id, JobState.FAILED, message=f"launch failed: {exc}")
            return False
        await self.store.set_handle(job_id, handle)
        log.info("started job %s with the %s launcher", job_id, self.launcher.name)
        return True

    async def _follow_events(self, job: JobRecord) -> None:
        """Apply what the learner reported: lifecycle states and progress."""
        cursor = self._cursors.get(job.id, "0-0")
        state = job.state
        for entry_id, event in await self.store.events(job.id, after=cursor):
            cursor = entry_id
            if event.event == "metrics" and event.step is not None:
                metrics = {k: float(v) for k, v in event.data.items() if isinstance(v, int | float)}
                await self.store.record_progress(job.id, event.step, metrics)
            elif event.event == "state" and event.state and event.state in ALLOWED.get(state, set()):
                with contextlib.suppress(IllegalTransition):
                    await self.store.transition(job.id, event.state, announce=False, message=event.message)
                    state = event.state
        self._cursors[job.id] = cursor

    async def _check_launch(self, job: JobRecord) -> None:
        """A learner that ended without reporting its end is relaunched while it has restarts left, else settled
        by its exit status."""
        current = await self.store.get(job.id)
        if current.state not in ACTIVE:
            return
        due = self._relaunch_at.get(job.id)
        if due is not None:
            if time.monotonic() >= due:
                del self._relaunch_at[job.id]
                await self._relaunch(current)
            return
        status = await self.launcher.poll(current)
        if status.state.terminal:
            await self._follow_events(current)  # it may have reported its end just before exiting
            current = await self.store.get(job.id)
            if current.state not in ACTIVE:
                return
            restarts = int(current.handle.get("restarts", 0))
            if (
                status.state is JobState.FAILED
                and self.launcher.relaunches
                and restarts < current.spec.schedule.max_restarts
            ):
                wait_s = min(RESTART_BACKOFF_S[0] * 2**restarts, RESTART_BACKOFF_S[1])
                self._relaunch_at[job.id] = time.monotonic() + wait_s
                limit = current.spec.schedule.max_restarts
                message = f"{status.message}; relaunching in {wait_s:g} s (restart {restarts + 1} of {limit})"
                log.warning("job %s: %s", job.id, message)
                await self.store.publish_event(JobEvent(job_id=job.id, event="log", message=message))
                return
            with contextlib.suppress(IllegalTransition):
                await self.store.transition(job.id, status.state, message=status.message)

    async def _relaunch(self, job: JobRecord) -> None:
        restarts = int(job.handle.get("restarts", 0)) + 1
        try:
            handle = await self.launcher.start(job)
        except Exception as exc:
            log.exception("relaunching %s failed", job.id)
            with contextlib.suppress(IllegalTransition):
                await self.store.transition(job.id, JobState.FAILED, message=f"relaunch failed: {exc}")
            return
        await self.store.set_handle(job.id, {**handle, "restarts": restarts})
        RESTARTS.labels(job.id).inc()
        message = f"learner relaunched (restart {restarts} of {job.spec.schedule.max_restarts})"
        await self.store.publish_event(
            JobEvent(job_id=job.id, event="log", message=message, data={"restarts": restarts})
        )
        log.info("job %s: %s", job.id, message)

    async def _export_counts(self) -> None:
        for state, count in (await self.store.counts()).items():
            JOBS.labels(state.value).set(count)

    # -- background loop ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish the current tick and stop (cancelling a tick mid-call could leave a Redis call half-done)."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(self._task, timeout=30)
        except TimeoutError:
            log.warning("scheduler tick did not finish within 30s; cancelling it")

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("scheduler tick failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
