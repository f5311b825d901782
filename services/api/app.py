"""The jobs REST API: submit, list, inspect, follow and cancel training jobs; submit and inspect evaluations.

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
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import make_asgi_app
from pydantic import BaseModel, Field, SecretStr, field_validator

from services.bodylimit import BodyLimit
from services.config import SHARED_DATA_DIR, Settings
from services.contracts import PRESETS, ContractError, JobEvent, JobSpec, JobState, RolloutConfig
from services.streams import Streams, connect
from services.telemetry import configure_logging

from .admission import Capacity, admit
from .evaluations import Evaluation, EvaluationList, EvaluationRequest, checkpoint_of, eval_sources, eval_spec, view
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
    # What one learner may have with the local launcher: jobs asking for more are refused at submission.
    learner_cpus: float | None = Field(None, gt=0, description="CPUs (default: this machine's)")
    learner_gpus: int | None = Field(None, ge=0, description="GPUs (default: this machine's NVIDIA GPUs)")
    data_dir: Path | None = Field(
        None, description="where the local launcher's learners read relative data paths (they read this setting "
        "too); default: the working directory",
    )  # fmt: skip
    scheduler_interval_s: float = Field(1.0, gt=0)
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies are answered 413")
    max_event_followers: int = Field(64, ge=1, description="event streams followed at once (each holds a Redis call)")
    job_retention_s: float | None = Field(
        None, gt=0, description="ended jobs created longer ago are deleted with their streams; None = kept forever"
    )
    shared_data_dir: Path = Field(
        SHARED_DATA_DIR, description="the data kit whose eval/ sets evaluations name, as the learners see it"
    )

    @field_validator("api_token")
    @classmethod
    def _printable_ascii(cls, token: SecretStr | None) -> SecretStr | None:
        """A bearer token travels in an HTTP header: printable ASCII, or no client could send it."""
        if token is not None and not (token.get_secret_value().isascii() and token.get_secret_value().isprintable()):
            raise ValueError("the API token must be printable ASCII (it is sent in the Authorization header)")
        return token


def build_launcher(settings: ApiSettings) -> Launcher:
    if settings.launcher == "kuberay":
        return KubeRayLauncher(settings.kuberay)
    capacity = Capacity.of_this_machine(settings.learner_cpus, settings.learner_gpus)
    return LocalLauncher(settings.work_dir, settings.learner_entrypoint, capacity=capacity)


class ErrorDetail(BaseModel):
    detail: str = Field(description="what is wrong, naming the field where a field is wrong")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorDetail, "description": description}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("no bearer token"), 403: _error("wrong bearer token"),
    415: _error("with no token configured: a POST that is not application/json"),
}  # fmt: skip
NOT_FOUND = {404: _error("no such job")}
INVALID = {413: _error("request body too large"), 422: _error("invalid request body; the detail names the field")}
MAX_JSON_DEPTH = 32  # nesting of a request body; a JobSpec is five levels deep


def _body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _add_component_schemas(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Put the JSON schemas of request models that routes read themselves (to answer readable 422s) into the
    OpenAPI components, where the routes' request bodies refer to them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: no recursion to exhaust)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


async def _json_object(request: Request, what: str) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 4,301-digit integer, nesting past the stack
        raise HTTPException(422, f"request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise HTTPException(422, f"request body must be a JSON object: {what}")
    if _depth(body) > MAX_JSON_DEPTH:
        raise HTTPException(422, f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


def create_app(settings: ApiSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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

    app = FastAPI(title="searchr1", version="0.1.0", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    local_learners = settings.launcher == "local"  # they read this machine's files: the API can check data paths
    bearer = HTTPBearer(auto_error=False)

    def authorize(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if settings.api_token is None:
            json_posts_only(request)
            return
        if credentials is None:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        # Bytes, not str: compare_digest refuses non-ASCII str; headers arrive decoded as latin-1.
        given = credentials.credentials.encode("latin-1", errors="replace")
        if not hmac.compare_digest(given, settings.api_token.get_secret_value().encode()):
            raise HTTPException(403, "wrong bearer token")

    def json_posts_only(request: Request) -> None:
        """With no token a web page in the user's browser could POST here cross-origin, but only as text/plain,
        a form or multipart: a JSON content type needs a CORS preflight, which this API never grants."""
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if request.method == "POST" and media_type != "application/json":
            raise HTTPException(415, f"POST bodies must be application/json, got {media_type or 'no content type'!r}")

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
            await request.app.state.store.streams.ping()
        except Exception as exc:  # any failure to reach Redis means not ready
            return JSONResponse({"status": f"redis unreachable: {exc}"}, status_code=503)
        return JSONResponse({"status": "ready"})

    app.mount("/metrics", make_asgi_app())
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=AUTH_ERRORS)

    submit_schema = _body_schema(
        {
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
    )

    @v1.post("/jobs", status_code=201, openapi_extra=submit_schema, responses=INVALID)
    async def submit(request: Request) -> JSONResponse:
        """Submit a JobSpec, or `{"preset": NAME, "overrides": {...}}`."""
        body = await _json_object(request, "a JobSpec or {preset, overrides}")
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
            admit(spec, request.app.state.scheduler.launcher.capacity, local_learners, settings.data_dir)
            job = await store(request).create(spec)
        except ContractError as exc:
            raise HTTPException(422, str(exc)) from None
        return JSONResponse(job.to_api(), status_code=201)

    @v1.get("/jobs")
    async def list_jobs(
        request: Request,
        state: JobState | None = None,
        kind: Literal["train", "eval"] | None = None,
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=500),
    ) -> dict[str, Any]:
        """Jobs newest first: trainings and evaluations (`kind` keeps one of them)."""
        jobs, total = await store(request).list(state, offset, limit, kind)
        quarantined = await store(request).quarantined()  # undecodable records, out of the listing (see the log)
        return {
            "jobs": [job.to_api() for job in jobs], "total": total, "offset": offset, "limit": limit,
            "quarantined": quarantined,
        }  # fmt: skip

    @v1.get("/jobs/{job_id}", responses=NOT_FOUND)
    async def get_job(request: Request, job_id: str) -> dict[str, Any]:
        return (await store(request).get(job_id)).to_api()

    @v1.post("/jobs/{job_id}/cancel", responses={**NOT_FOUND, 409: _error("the job has already ended")})
    async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        return (await request.app.state.scheduler.cancel(job_id)).to_api()

    async def events_of(job_store: JobStore, job_id: str, kind: str | None = None) -> list[JobEvent]:
        """The job's events, oldest first; only those of `kind` when given."""
        return [event for _, event in await job_store.events(job_id) if kind is None or event.event == kind]

    async def steps_of(request: Request, job_id: str, kind: str) -> list[dict[str, Any]]:
        """The job's events of one kind, each as {step, **data} (404 for an unknown job)."""
        await store(request).get(job_id)
        return [{"step": e.step, **e.data} for e in await events_of(store(request), job_id, kind)]

    @v1.get("/jobs/{job_id}/metrics", responses=NOT_FOUND)
    async def job_metrics(request: Request, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "history": await steps_of(request, job_id, "metrics")}

    @v1.get("/jobs/{job_id}/checkpoints", responses=NOT_FOUND)
    async def job_checkpoints(request: Request, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "checkpoints": await steps_of(request, job_id, "checkpoint")}

    event_stream = {
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}, **NOT_FOUND,
        429: _error("too many event streams are followed at once; retry later"),
    }  # fmt: skip
    followers = 0  # streams being followed now: each holds a blocking Redis read

    @v1.get("/jobs/{job_id}/events", response_class=StreamingResponse, responses=event_stream)
    async def job_events(request: Request, job_id: str, follow: bool = True) -> StreamingResponse:
        """Server-sent events: every event of the job; with `follow`, until the job has ended."""
        nonlocal followers
        job_store = store(request)
        await job_store.get(job_id)
        if follow and followers >= settings.max_event_followers:
            raise HTTPException(429, f"{followers} event streams are followed already; retry later or follow=false")
        followers += follow

        async def stream() -> AsyncIterator[str]:
            nonlocal followers
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
                followers -= follow

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- evaluations: jobs of kind `eval` ------------------------------------------------------------------
    async def evaluation_of(job_store: JobStore, evaluation_id: str) -> Evaluation:
        try:
            job = await job_store.get(evaluation_id)
        except JobNotFound:
            job = None
        if job is None or job.spec.kind != "eval":
            raise HTTPException(404, f"no evaluation with id {evaluation_id!r}")
        return view(job, await events_of(job_store, job.id))

    async def evaluated(job_store: JobStore, evaluation: EvaluationRequest) -> tuple[str, RolloutConfig, dict]:
        """(model, rollout config, origin) of what an evaluation evaluates: a model, or a job's checkpoint."""
        if evaluation.job_id is None:
            assert evaluation.model is not None  # parse() requires one of them
            return evaluation.model, evaluation.rollout or RolloutConfig(), {}
        try:
            job = await job_store.get(evaluation.job_id)
        except JobNotFound:
            raise HTTPException(404, f"EvaluationRequest.job_id: no job with id {evaluation.job_id!r}") from None
        checkpoints = await events_of(job_store, job.id, "checkpoint")
        step, policy = checkpoint_of(job, checkpoints, evaluation.step)
        return policy, evaluation.rollout or job.spec.rollout, {"job_id": job.id, "step": step}

    @v1.post(
        "/evaluations", status_code=201, response_model=Evaluation,
        openapi_extra=_body_schema({"$ref": "#/components/schemas/EvaluationRequest"}),
        responses={404: _error("no job with that job_id"), **INVALID},
    )  # fmt: skip
    async def submit_evaluation(request: Request) -> Evaluation:
        """Evaluate a model, or a training job's checkpoint (`job_id`, `step`: default the latest), on data sets
        of the shared data kit (`datasets`) and/or JSONL files (`paths`): greedy exact match per data set."""
        body = await _json_object(request, "an EvaluationRequest")
        job_store = store(request)
        try:
            evaluation = EvaluationRequest.parse(body)
            model, rollout, origin = await evaluated(job_store, evaluation)
            sources = eval_sources(evaluation, settings.shared_data_dir, check_files=local_learners)
            spec = eval_spec(evaluation, model, sources, rollout)
            admit(spec, request.app.state.scheduler.launcher.capacity, local_learners, settings.data_dir)
            created = await job_store.create(spec, origin)
        except ContractError as exc:
            raise HTTPException(422, str(exc)) from None
        return view(created, [])

    @v1.get("/evaluations", response_model=EvaluationList)
    async def list_evaluations(
        request: Request,
        state: JobState | None = None,
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=500),
    ) -> EvaluationList:
        """Evaluations newest first, with their results once done."""
        job_store = store(request)
        jobs, total = await job_store.list(state, offset, limit, kind="eval")
        found = [view(job, await events_of(job_store, job.id)) for job in jobs]
        return EvaluationList(evaluations=found, total=total, offset=offset, limit=limit)

    @v1.get("/evaluations/{evaluation_id}", response_model=Evaluation, responses={404: _error("no such evaluation")})
    async def get_evaluation(request: Request, evaluation_id: str) -> Evaluation:
        """An evaluation's state, progress and, once done, exact match per data set."""
        return await evaluation_of(store(request), evaluation_id)

    app.include_router(v1)
    _add_component_schemas(app, [JobSpec, EvaluationRequest])
    return app


def main() -> None:
    settings = ApiSettings.load()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
