"""The jobs REST API: submit, list, inspect, follow and cancel training jobs.

Run with `python -m services.api.app` (settings from SEARCHR1_* env). Every route but health and metrics needs
`Authorization: Bearer <SEARCHR1_API_TOKEN>` when a token is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import make_asgi_app
from pydantic import Field, SecretStr

from services.config import Settings
from services.contracts import PRESETS, ContractError, JobSpec, JobState
from services.streams import Streams, connect
from services.telemetry import configure_logging

from .kuberay import KubeRayLauncher, KubeRaySettings
from .launchers import DEFAULT_ENTRYPOINT, Launcher, LocalLauncher
from .scheduler import Scheduler
from .store import IllegalTransition, JobNotFound, JobStore

log = logging.getLogger(__name__)


class ApiSettings(Settings):
    api_token: SecretStr | None = Field(None, description="bearer token; unset = no auth (local use only)")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_running_jobs: int = Field(1, ge=1)
    launcher: Literal["local", "kuberay"] = "local"
    kuberay: KubeRaySettings = Field(default_factory=KubeRaySettings)
    work_dir: Path = Path("var")
    learner_entrypoint: str = DEFAULT_ENTRYPOINT
    scheduler_interval_s: float = Field(1.0, gt=0)


def build_launcher(settings: ApiSettings) -> Launcher:
    if settings.launcher == "kuberay":
        return KubeRayLauncher(settings.kuberay)
    return LocalLauncher(settings.work_dir, settings.learner_entrypoint)


def create_app(settings: ApiSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        streams = Streams(connect(settings), settings)
        app.state.store = JobStore(streams)
        app.state.scheduler = Scheduler(
            app.state.store, build_launcher(settings), settings.max_running_jobs, settings.scheduler_interval_s
        )
        app.state.scheduler.start()
        if settings.api_token is None:
            log.warning("SEARCHR1_API_TOKEN is not set: the jobs API accepts unauthenticated requests")
        try:
            yield
        finally:
            await app.state.scheduler.stop()
            await streams.redis.aclose()

    app = FastAPI(title="searchr1", version="0.1.0", lifespan=lifespan)
    bearer = HTTPBearer(auto_error=False)

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if settings.api_token is None:
            return
        if credentials is None:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials, settings.api_token.get_secret_value()):
            raise HTTPException(403, "wrong bearer token")

    def store(request: Request) -> JobStore:
        return request.app.state.store

    @app.exception_handler(JobNotFound)
    async def not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(IllegalTransition)
    async def conflict(_: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        try:
            await request.app.state.store.redis.ping()
        except Exception as exc:  # any failure to reach Redis means not ready
            return JSONResponse({"status": f"redis unreachable: {exc}"}, status_code=503)
        return JSONResponse({"status": "ready"})

    app.mount("/metrics", make_asgi_app())

    submit_schema = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/JobSpec"},
                            {
                                "type": "object",
                                "required": ["preset"],
                                "properties": {
                                    "preset": {"type": "string", "enum": sorted(PRESETS)},
                                    "overrides": {"type": "object"},
                                },
                                "additionalProperties": False,
                            },
                        ]
                    }
                }
            },
        }
    }

    @app.post("/v1/jobs", status_code=201, dependencies=[Depends(authorize)], openapi_extra=submit_schema)
    async def submit(request: Request) -> JSONResponse:
        """Submit a JobSpec, or `{"preset": NAME, "overrides": {...}}`."""
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPException(422, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HTTPException(422, "request body must be a JSON object: a JobSpec or {preset, overrides}")
        try:
            if "preset" in body:
                unknown = set(body) - {"preset", "overrides"}
                if unknown:
                    raise ContractError(f"with a preset, only 'overrides' may be given; got {sorted(unknown)}")
                overrides = body.get("overrides") or {}
                if not isinstance(body["preset"], str) or not isinstance(overrides, dict):
                    raise ContractError("preset must be a string and overrides an object")
                spec = JobSpec.from_preset(body["preset"], overrides)
            else:
                spec = JobSpec.parse(body)
        except ContractError as exc:
            raise HTTPException(422, str(exc)) from None
        job = await store(request).create(spec)
        return JSONResponse(job.to_api(), status_code=201)

    @app.get("/v1/jobs", dependencies=[Depends(authorize)])
    async def list_jobs(
        request: Request,
        state: JobState | None = None,
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=500),
    ) -> dict[str, Any]:
        jobs, total = await store(request).list(state, offset, limit)
        return {"jobs": [job.to_api() for job in jobs], "total": total, "offset": offset, "limit": limit}

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(authorize)])
    async def get_job(request: Request, job_id: str) -> dict[str, Any]:
        return (await store(request).get(job_id)).to_api()

    @app.post("/v1/jobs/{job_id}/cancel", dependencies=[Depends(authorize)])
    async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        return (await request.app.state.scheduler.cancel(job_id)).to_api()

    async def steps_of(request: Request, job_id: str, kind: str) -> list[dict[str, Any]]:
        """The job's events of one kind, each as {step, **data} (404 for an unknown job)."""
        await store(request).get(job_id)
        return [{"step": e.step, **e.data} for _, e in await store(request).events(job_id) if e.event == kind]

    @app.get("/v1/jobs/{job_id}/metrics", dependencies=[Depends(authorize)])
    async def job_metrics(request: Request, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "history": await steps_of(request, job_id, "metrics")}

    @app.get("/v1/jobs/{job_id}/checkpoints", dependencies=[Depends(authorize)])
    async def job_checkpoints(request: Request, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "checkpoints": await steps_of(request, job_id, "checkpoint")}

    @app.get("/v1/jobs/{job_id}/events", dependencies=[Depends(authorize)])
    async def job_events(request: Request, job_id: str, follow: bool = True) -> StreamingResponse:
        """Server-sent events: every event of the job; with `follow`, until the job has ended."""
        job_store = store(request)
        await job_store.get(job_id)

        async def stream() -> AsyncIterator[str]:
            cursor = "0-0"
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

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def main() -> None:
    settings = ApiSettings.load()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
