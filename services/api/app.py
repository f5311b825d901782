"""The jobs REST API: submit, list, inspect, follow and cancel training jobs; submit and inspect evaluations.

Run with `python -m services.api.app` (settings from SEARCHR1_* env). Every route but health and metrics needs
`Authorization: Bearer <SEARCHR1_API_TOKEN>` when a token is configured. The routes live in routers
(job_routes, evaluation_routes) and get the settings, job store and scheduler as dependencies (deps).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app

from services.bodylimit import BodyLimit
from services.contracts import JobSpec
from services.streams import Streams, connect
from services.telemetry import configure_logging

from . import evaluation_routes, job_routes
from .admission import Capacity
from .deps import Followers, authorize
from .evaluations import EvaluationRequest
from .kuberay import KubeRayLauncher
from .launchers import Launcher, LocalLauncher
from .openapi import AUTH_ERRORS, add_component_schemas
from .scheduler import Scheduler
from .settings import ApiSettings
from .store import IllegalTransition, JobNotFound, JobStore

log = logging.getLogger(__name__)


def build_launcher(settings: ApiSettings) -> Launcher:
    if settings.launcher == "kuberay":
        return KubeRayLauncher(settings.kuberay)
    capacity = Capacity.of_this_machine(settings.learner_cpus, settings.learner_gpus)
    return LocalLauncher(settings.work_dir, settings.learner_entrypoint, capacity=capacity)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The job store and the scheduler, for as long as the app serves."""
    settings: ApiSettings = app.state.settings
    streams = Streams(connect(settings), settings)
    app.state.store = JobStore(streams)
    await app.state.store.index_states()
    app.state.scheduler = Scheduler(
        app.state.store, build_launcher(settings), settings.max_running_jobs, settings.scheduler_interval_s,
        settings.job_retention_s,
    )  # fmt: skip
    app.state.scheduler.start()
    if settings.api_token is None:
        log.warning("SEARCHR1_API_TOKEN is not set: the jobs API accepts unauthenticated requests")
    try:
        yield
    finally:
        await app.state.scheduler.stop()
        await streams.aclose()


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(request: Request) -> Response:
    try:
        await request.app.state.store.streams.ping()
    except Exception as exc:  # any failure to reach Redis means not ready
        return JSONResponse({"status": f"redis unreachable: {exc}"}, status_code=503)
    return JSONResponse({"status": "ready"})


def create_app(settings: ApiSettings) -> FastAPI:
    app = FastAPI(title="searchr1", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.followers = Followers(limit=settings.max_event_followers)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(IllegalTransition, _conflict)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
    app.mount("/metrics", make_asgi_app())
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=AUTH_ERRORS)
    v1.include_router(job_routes.router)
    v1.include_router(evaluation_routes.router)
    app.include_router(v1)
    add_component_schemas(app, [JobSpec, EvaluationRequest])
    return app


def main() -> None:
    settings = ApiSettings.load()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
