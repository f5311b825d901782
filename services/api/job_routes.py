"""The training-job routes of the API: submit, list, inspect, follow and cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.contracts import PRESETS, ContractError, JobEvent, JobSpec, JobState

from .admission import admit
from .deps import FollowersDep, SchedulerDep, SettingsDep, StoreDep, json_object
from .openapi import INVALID, NOT_FOUND, body_schema, error
from .store import JobStore

router = APIRouter()

SUBMIT_SCHEMA = body_schema(
    {
        "oneOf": [
            {"$ref": "#/components/schemas/JobSpec"},
            {
                "type": "object",
                "required": ["preset"],
                "properties": {"preset": {"type": "string", "enum": sorted(PRESETS)}, "overrides": {"type": "object"}},
                "additionalProperties": False,
            },
        ]
    }
)
EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}, **NOT_FOUND,
    429: error("too many event streams are followed at once; retry later"),
}  # fmt: skip


def spec_of(body: dict[str, Any]) -> JobSpec:
    """A JobSpec, or `{"preset": NAME, "overrides": {...}}`, as a spec (ContractError when it is not one)."""
    if "preset" not in body:
        return JobSpec.parse(body)
    unknown = set(body) - {"preset", "overrides"}
    if unknown:
        raise ContractError(f"with a preset, only 'overrides' may be given; got {sorted(unknown)}")
    overrides = body.get("overrides") or {}
    if not isinstance(body["preset"], str) or not isinstance(overrides, dict):
        raise ContractError("preset must be a string and overrides an object")
    return JobSpec.from_preset(body["preset"], overrides)


async def events_of(job_store: JobStore, job_id: str, kind: str | None = None) -> list[JobEvent]:
    """The job's events, oldest first; only those of `kind` when given."""
    return [event for _, event in await job_store.events(job_id) if kind is None or event.event == kind]


async def steps_of(job_store: JobStore, job_id: str, kind: str) -> list[dict[str, Any]]:
    """The job's events of one kind, each as {step, **data} (404 for an unknown job)."""
    await job_store.get(job_id)
    return [{"step": e.step, **e.data} for e in await events_of(job_store, job_id, kind)]


@router.post("/jobs", status_code=201, openapi_extra=SUBMIT_SCHEMA, responses=INVALID)
async def submit(request: Request, settings: SettingsDep, job_store: StoreDep, scheduler: SchedulerDep) -> JSONResponse:
    """Submit a JobSpec, or `{"preset": NAME, "overrides": {...}}`."""
    body = await json_object(request, "a JobSpec or {preset, overrides}")
    try:
        spec = spec_of(body)
        admit(spec, scheduler.launcher.capacity, settings.local_learners, settings.data_dir)
        job = await job_store.create(spec)
    except ContractError as exc:
        raise HTTPException(422, str(exc)) from None
    return JSONResponse(job.to_api(), status_code=201)


@router.get("/jobs")
async def list_jobs(
    job_store: StoreDep,
    state: JobState | None = None,
    kind: Literal["train", "eval"] | None = None,
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    """Jobs newest first: trainings and evaluations (`kind` keeps one of them)."""
    jobs, total = await job_store.list(state, offset, limit, kind)
    quarantined = await job_store.quarantined()  # undecodable records, out of the listing (see the log)
    return {
        "jobs": [job.to_api() for job in jobs], "total": total, "offset": offset, "limit": limit,
        "quarantined": quarantined,
    }  # fmt: skip


@router.get("/jobs/{job_id}", responses=NOT_FOUND)
async def get_job(job_store: StoreDep, job_id: str) -> dict[str, Any]:
    return (await job_store.get(job_id)).to_api()


@router.post("/jobs/{job_id}/cancel", responses={**NOT_FOUND, 409: error("the job has already ended")})
async def cancel_job(scheduler: SchedulerDep, job_id: str) -> dict[str, Any]:
    return (await scheduler.cancel(job_id)).to_api()


@router.get("/jobs/{job_id}/metrics", responses=NOT_FOUND)
async def job_metrics(job_store: StoreDep, job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "history": await steps_of(job_store, job_id, "metrics")}


@router.get("/jobs/{job_id}/checkpoints", responses=NOT_FOUND)
async def job_checkpoints(job_store: StoreDep, job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "checkpoints": await steps_of(job_store, job_id, "checkpoint")}


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse, responses=EVENT_STREAM)
async def job_events(
    request: Request, job_store: StoreDep, followers: FollowersDep, job_id: str, follow: bool = True
) -> StreamingResponse:
    """Server-sent events: every event of the job; with `follow`, until the job has ended."""
    await job_store.get(job_id)
    if follow and followers.count >= followers.limit:
        raise HTTPException(429, f"{followers.count} event streams are followed already; retry later or follow=false")
    followers.count += follow

    async def stream() -> AsyncIterator[str]:
        cursor = "0-0"
        try:
            while True:
                batch = await job_store.events(job_id, after=cursor, block_ms=1000 if follow else None)
                for entry_id, event in batch:
                    cursor = entry_id
                    yield f"id: {entry_id}\nevent: {event.event}\ndata: {event.model_dump_json()}\n\n"
                if not follow or (not batch and (await job_store.get(job_id)).state.terminal):
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0)
        finally:
            followers.count -= follow

    return StreamingResponse(stream(), media_type="text/event-stream")
