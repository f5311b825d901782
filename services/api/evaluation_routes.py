"""The evaluation routes of the API: evaluations are jobs of kind `eval`, viewed with their results."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request

from services.contracts import ContractError, JobState, RolloutConfig

from .admission import admit
from .deps import SchedulerDep, SettingsDep, StoreDep, json_object
from .evaluations import Evaluation, EvaluationList, EvaluationRequest, checkpoint_of, eval_sources, eval_spec, view
from .job_routes import events_of
from .openapi import INVALID, body_schema, error
from .store import JobNotFound, JobStore

router = APIRouter()


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


@router.post(
    "/evaluations", status_code=201, response_model=Evaluation,
    openapi_extra=body_schema({"$ref": "#/components/schemas/EvaluationRequest"}),
    responses={404: error("no job with that job_id"), **INVALID},
)  # fmt: skip
async def submit_evaluation(
    request: Request, settings: SettingsDep, job_store: StoreDep, scheduler: SchedulerDep
) -> Evaluation:
    """Evaluate a model, or a training job's checkpoint (`job_id`, `step`: default the latest), on data sets
    of the shared data kit (`datasets`) and/or JSONL files (`paths`): greedy exact match per data set."""
    body = await json_object(request, "an EvaluationRequest")
    try:
        evaluation = EvaluationRequest.parse(body)
        model, rollout, origin = await evaluated(job_store, evaluation)
        sources = eval_sources(evaluation, settings.shared_data_dir, check_files=settings.local_learners)
        spec = eval_spec(evaluation, model, sources, rollout)
        admit(spec, scheduler.launcher.capacity, settings.local_learners, settings.data_dir)
        created = await job_store.create(spec, origin)
    except ContractError as exc:
        raise HTTPException(422, str(exc)) from None
    return view(created, [])


@router.get("/evaluations", response_model=EvaluationList)
async def list_evaluations(
    job_store: StoreDep,
    state: JobState | None = None,
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=500),
) -> EvaluationList:
    """Evaluations newest first, with their results once done."""
    jobs, total = await job_store.list(state, offset, limit, kind="eval")
    found = [view(job, await events_of(job_store, job.id)) for job in jobs]
    return EvaluationList(evaluations=found, total=total, offset=offset, limit=limit)


@router.get("/evaluations/{evaluation_id}", response_model=Evaluation, responses={404: error("no such evaluation")})
async def get_evaluation(job_store: StoreDep, evaluation_id: str) -> Evaluation:
    """An evaluation's state, progress and, once done, exact match per data set."""
    return await evaluation_of(job_store, evaluation_id)
