"""The job store: jobs (trainings and evaluations) in Redis, with atomic state transitions and a FIFO admission
queue.

A job is a hash (`<prefix>:jobs:<id>`); `<prefix>:jobs:index` orders jobs by creation,
`<prefix>:jobs:state:<STATE>` the jobs in each state (so a scheduler tick reads the active jobs, not every job ever
run) and `<prefix>:jobs:queue` holds the queued ones in arrival order. Job ids always end in `-<8 hex digits>`, so
none can name the store's own keys. A record that cannot be decoded is quarantined (`<prefix>:jobs:quarantine`):
out of the listing and the queue, logged and counted, kept for a person to inspect, so it cannot take listing or
scheduling down.

Every state change is one Lua script that checks the current state, so two API replicas (or an API restart in
the middle of a launch) can never move a job along an illegal edge.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from services.contracts import JobEvent, JobSpec, JobState
from services.streams import Entry, Streams
from services.telemetry import counter

log = logging.getLogger(__name__)

# What `create` makes: the job's name (JobSpec.name), '-', eight hex digits.
JOB_ID = re.compile(r"[a-z0-9][-a-z0-9]{0,62}-[0-9a-f]{8}")
QUARANTINED = counter("searchr1_api_jobs_quarantined_total", "Job records that could not be decoded, quarantined")

ALLOWED: dict[JobState, set[JobState]] = {
    JobState.QUEUED: {JobState.STARTING, JobState.CANCELLED},
    JobState.STARTING: {JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED},
    JobState.RUNNING: {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED},
}

# KEYS: job hash, queue, the per-state indexes' key prefix (`...:jobs:state:`, + state).  ARGV: job id, new state,
# now, allowed current states (space separated), then field/value pairs to set. Returns the previous state, or an
# error reply naming the refused edge.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return redis.error_reply('no such job ' .. ARGV[1]) end
local allowed = ' ' .. ARGV[4] .. ' '
if not string.find(allowed, ' ' .. current .. ' ', 1, true) then
  return redis.error_reply('illegal transition ' .. current .. ' -> ' .. ARGV[2])
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[3])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if current == 'QUEUED' then redis.call('LREM', KEYS[2], 0, ARGV[1]) end
redis.call('ZREM', KEYS[3] .. current, ARGV[1])
redis.call('ZADD', KEYS[3] .. ARGV[2], redis.call('HGET', KEYS[1], 'created_at'), ARGV[1])
return current
"""


class JobNotFound(LookupError):
    pass


class IllegalTransition(ValueError):
    pass


class JobUnreadable(JobNotFound):
    """The job's stored record cannot be decoded; it has been quarantined (to the scheduler: gone)."""


@dataclass
class JobRecord:
    id: str
    spec: JobSpec
    state: JobState
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    message: str = ""
    launcher: str = ""
    handle: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)  # what an evaluation evaluates: {job_id, step} of a job

    @property
    def total_steps(self) -> int:
        return self.spec.schedule.total_steps if self.spec.kind == "train" else 0

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Linear extrapolation from the steps done so far; None until a step has finished."""
        if self.state is not JobState.RUNNING or not self.started_at or self.step <= 0:
            return None
        elapsed = (now or time.time()) - self.started_at
        return elapsed / self.step * max(self.total_steps - self.step, 0)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.spec.name,
            "kind": self.spec.kind,
            "state": self.state.value,
            "step": self.step,
            "total_steps": self.total_steps,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "eta_seconds": self.eta_seconds(),
            "message": self.message,
            "metrics": self.metrics,
            "spec": self.spec.model_dump(mode="json"),
        }


def _event(job_id: str, entry: Entry[JobEvent]) -> JobEvent:
    """A stream entry as an event; one that cannot be decoded becomes a log event saying so, so that it neither
    fails every reader of the job's events (listings, the scheduler's tick) nor stops their cursors."""
    if entry.message is not None:
        return entry.message
    return JobEvent(job_id=job_id, event="log", message=f"an undecodable event was skipped: {str(entry.error)[:300]}")


def _kind(values: list[bytes | None]) -> str | None:
    """A job's kind from HMGET kind, spec (records stored before `kind` had its field: the spec's)."""
    kind, spec = values
    if kind is not None:
        return kind.decode()
    try:
        return json.loads(spec or b"{}").get("kind", "train")
    except (ValueError, AttributeError):
        return None  # unreadable: the listing that reads it whole quarantines it


def _decode(raw: dict[bytes, bytes]) -> JobRecord:
    values = {k.decode(): v.decode() for k, v in raw.items()}

    def optional_float(key: str) -> float | None:
        return float(values[key]) if values.get(key) else None

    return JobRecord(
        id=values["id"],
        spec=JobSpec.model_validate_json(values["spec"]),
        state=JobState(values["state"]),
        created_at=float(values["created_at"]),
        updated_at=float(values["updated_at"]),
        started_at=optional_float("started_at"),
        finished_at=optional_float("finished_at"),
        step=int(values.get("step") or 0),
        message=values.get("message", ""),
        launcher=values.get("launcher", ""),
        handle=json.loads(values.get("handle") or "{}"),
        metrics=json.loads(values.get("metrics") or "{}"),
        origin=json.loads(values.get("origin") or "{}"),
    )


class JobStore:
    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self.redis: aioredis.Redis = streams.redis
        prefix = streams.prefix
        self._index = f"{prefix}:jobs:index"
        self._queue = f"{prefix}:jobs:queue"
        self._quarantine = f"{prefix}:jobs:quarantine"
        self._by_state = f"{prefix}:jobs:state:"
        self._indexed = f"{prefix}:jobs:state-indexed"  # set once the per-state indexes cover every job
        self._job_prefix = f"{prefix}:jobs:"
        self._transition = self.redis.register_script(_TRANSITION)

    def _key(self, job_id: str) -> str:
        if not JOB_ID.fullmatch(job_id):
            raise JobNotFound(f"no job with id {job_id[:100]!r}")
        return self._job_prefix + job_id

    async def create(self, spec: JobSpec, origin: dict[str, Any] | None = None) -> JobRecord:
        """Store a new QUEUED job at the back of the queue (one transaction: all or nothing)."""
        now = time.time()
        job_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._key(job_id),
                mapping={
                    "id": job_id,
                    "spec": spec.to_json(),
                    "kind": spec.kind,
                    "state": JobState.QUEUED.value,
                    "created_at": repr(now),
                    "updated_at": repr(now),
                    "step": 0,
                    "origin": json.dumps(origin or {}),
                },
            )
            pipe.zadd(self._index, {job_id: now})
            pipe.zadd(self._by_state + JobState.QUEUED.value, {job_id: now})
            pipe.rpush(self._queue, job_id)
            await pipe.execute()
        await self.publish_event(JobEvent(job_id=job_id, event="state", state=JobState.QUEUED))
        return await self.get(job_id)

    async def get(self, job_id: str) -> JobRecord:
        raw = await self.redis.hgetall(self._key(job_id))
        if not raw:
            raise JobNotFound(f"no job with id {job_id!r}")
        record = await self._read(job_id, raw)
        if record is None:
            raise JobUnreadable(f"job {job_id}: its stored record cannot be read; it is quarantined (see the log)")
        return record

    async def _read(self, job_id: str, raw: dict[bytes, bytes]) -> JobRecord | None:
        """The decoded record, or None after quarantining a record that cannot be decoded."""
        try:
            return _decode(raw)
        except (ValueError, KeyError, TypeError) as exc:  # ValidationError and JSON errors are ValueErrors
            reason = f"{type(exc).__name__}: {exc}"[:1000]
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self._quarantine, {job_id: time.time()}, nx=True)
                pipe.zrem(self._index, job_id)
                for state in JobState:
                    pipe.zrem(self._by_state + state.value, job_id)
                pipe.lrem(self._queue, 0, job_id)
                pipe.hset(self._key(job_id), "quarantined", reason)
                added, *_ = await pipe.execute()
            if added:
                QUARANTINED.inc()
                log.error("job %s: stored record cannot be decoded (%s); quarantined in %s", job_id, reason,
                          self._quarantine)  # fmt: skip
            return None

    async def quarantined(self) -> int:
        """How many job records were quarantined as undecodable."""
        return await self.redis.zcard(self._quarantine)

    async def list(
        self, state: JobState | None = None, offset: int = 0, limit: int = 50, kind: str | None = None
    ) -> tuple[list[JobRecord], int]:
        """Newest first, optionally only one state and one kind (train, eval); returns (page, total matching).
        A state reads its own index; a kind reads a small field of each job; only the page is read whole."""
        index = self._index if state is None else self._by_state + state.value
        ids = [i.decode() for i in await self.redis.zrevrange(index, 0, -1)]
        if kind is not None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(self._key(job_id), ["kind", "spec"])
                fields = await pipe.execute()
            ids = [job_id for job_id, values in zip(ids, fields, strict=True) if _kind(values) == kind]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids[offset : offset + limit]:
                pipe.hgetall(self._key(job_id))
            raws = await pipe.execute()
        page = [await self._read(job_id, raw) for job_id, raw in zip(ids[offset:], raws, strict=False) if raw]
        return [record for record in page if record is not None], len(ids)

    async def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for state in JobState:
                pipe.zcard(self._by_state + state.value)
            return dict(zip(JobState, await pipe.execute(), strict=True))

    async def expire(self, created_before: float) -> list[str]:
        """Delete the jobs that ended and were created before `created_before` (epoch seconds), with their
        streams; returns their ids."""
        ids = []
        for state in JobState:
            if state.terminal:
                ended = await self.redis.zrangebyscore(self._by_state + state.value, "-inf", created_before)
                ids += [job_id.decode() for job_id in ended]
        if ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                for job_id in ids:
                    streams = [self.streams.job(job_id, channel) for channel in ("events", "scored", "weights")]
                    pipe.delete(self._key(job_id), *streams)
                    pipe.zrem(self._index, job_id)
                    for state in JobState:
                        pipe.zrem(self._by_state + state.value, job_id)
                await pipe.execute()
        return ids

    async def index_states(self) -> None:
        """Build the per-state indexes of a store written before they existed (once; later calls cost one read)."""
        if await self.redis.exists(self._indexed):
            return
        ids = [i.decode() for i in await self.redis.zrange(self._index, 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self._key(job_id), ["state", "created_at"])
            fields = await pipe.execute()
        async with self.redis.pipeline(transaction=True) as pipe:
            for job_id, (state, created_at) in zip(ids, fields, strict=True):
                if state is not None:
                    pipe.zadd(self._by_state + state.decode(), {job_id: float(created_at or 0)})
            pipe.set(self._indexed, 1)
            await pipe.execute()
        log.info("indexed %d jobs by state", len(ids))

    async def queued(self) -> list[str]:
        return [i.decode() for i in await self.redis.lrange(self._queue, 0, -1)]

    async def transition(self, job_id: str, new_state: JobState, *, announce: bool = True, **fields: Any) -> JobState:
        """Move a job to `new_state` if the edge is legal; returns the state it left. `announce` puts a state
        event on the job's events stream; not when the learner's own event there is what the move applies."""
        allowed_from = [s.value for s, targets in ALLOWED.items() if new_state in targets]
        now = time.time()
        if new_state is JobState.RUNNING:
            fields.setdefault("started_at", now)
        if new_state.terminal:
            fields.setdefault("finished_at", now)
        args: list[Any] = [job_id, new_state.value, repr(now), " ".join(allowed_from)]
        for key, value in fields.items():
            args += [key, json.dumps(value) if isinstance(value, dict) else str(value)]
        try:
            previous = await self._transition(keys=[self._key(job_id), self._queue, self._by_state], args=args)
        except aioredis.ResponseError as exc:
            text = str(exc)
            if text.startswith("no such job"):
                raise JobNotFound(f"no job with id {job_id!r}") from None
            raise IllegalTransition(f"job {job_id}: {text}") from None
        if announce:
            await self.publish_event(
                JobEvent(job_id=job_id, event="state", state=new_state, message=str(fields.get("message", "")))
            )
        return JobState(previous.decode())

    async def set_handle(self, job_id: str, handle: dict[str, Any]) -> None:
        """Remember how the launcher can find the learner again (pid, RayJob name)."""
        await self.redis.hset(self._key(job_id), "handle", json.dumps(handle))

    async def record_progress(self, job_id: str, step: int, metrics: dict[str, float]) -> None:
        """The job's step and latest metrics; a diverged (NaN, infinite) metric is left out: JSON has no NaN."""
        finite = {name: value for name, value in metrics.items() if math.isfinite(value)}
        await self.redis.hset(
            self._key(job_id), mapping={"step": step, "metrics": json.dumps(finite), "updated_at": repr(time.time())}
        )

    async def publish_event(self, event: JobEvent) -> None:
        await self.streams.publish(self.streams.job(event.job_id, "events"), event)

    async def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None) -> list[tuple[str, JobEvent]]:
        """Events after entry id `after` (blocking up to `block_ms` for the first)."""
        entries = await self.streams.entries(self.streams.job(job_id, "events"), JobEvent, after, block_ms)
        return [(entry.entry_id, _event(job_id, entry)) for entry in entries]
