"""Evaluations: greedy exact match of a model, or of a training job's checkpoint, on named eval sets.

An evaluation is a job of kind `eval` (same store, queue, scheduler and launchers as training): its learner
announces the evaluated weights to the rollout tier, runs one greedy eval and reports EM per data set in an `eval`
event. This module turns a request into that JobSpec and a job's record and events into the API's view of it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.contracts import (
    MAX_ITEMS,
    MAX_TEXT,
    ContractError,
    DataConfig,
    DataSource,
    GRPOConfig,
    JobEvent,
    JobSpec,
    JobState,
    RolloutConfig,
    describe_validation_error,
)

from .store import JobRecord

# Names of the data kit's eval sets (files under <shared data>/eval/).
EVAL_SETS = {
    "nq": "nq_test.jsonl",
    "triviaqa": "triviaqa_test.jsonl",
    "popqa": "popqa_test.jsonl",
    "hotpotqa": "hotpotqa_dev.jsonl",
    "2wiki": "2wikimultihopqa_dev.jsonl",
    "musique": "musique_dev.jsonl",
    "bamboogle": "bamboogle_test.jsonl",
}
EvalSetName = Literal["nq", "triviaqa", "popqa", "hotpotqa", "2wiki", "musique", "bamboogle"]
EM_PREFIX = "eval_em/"


def _given_as_string(schema: dict[str, Any]) -> None:
    """The schema of model and job_id: a string when present (the request's oneOf says which one is), not null."""
    [string] = [option for option in schema.pop("anyOf") if option.get("type") != "null"]
    schema.update(string)
    schema.pop("default", None)


def _nonempty(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"minItems": 1}}}


class EvaluationRequest(BaseModel):
    """What to evaluate (`model`, or `job_id` with an optional `step`) and on what (`datasets` and/or `paths`)."""

    # The schema says what `parse` checks beyond the fields: one of model and job_id, at least one data set.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [{"required": ["model"]}, {"required": ["job_id"]}],
            "anyOf": [_nonempty("datasets"), _nonempty("paths")],
        },
    )

    name: str = Field("eval", min_length=1, max_length=54, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    model: str | None = Field(
        None, min_length=1, max_length=MAX_TEXT, description="HF id, local path or registry name",
        json_schema_extra=_given_as_string,
    )  # fmt: skip
    job_id: str | None = Field(
        None, min_length=1, max_length=128, description="evaluate a checkpoint of this training job",
        json_schema_extra=_given_as_string,
    )  # fmt: skip
    step: int | None = Field(None, ge=1, description="with job_id: the checkpoint's step (default: the latest)")
    datasets: list[EvalSetName] = Field(
        default_factory=list, description="eval sets of the shared data kit", json_schema_extra={"uniqueItems": True}
    )
    paths: list[Annotated[str, Field(max_length=MAX_TEXT)]] = Field(
        default_factory=list, max_length=64, description="absolute paths of JSONL eval files",
        json_schema_extra={"uniqueItems": True},
    )  # fmt: skip
    limit: int | None = Field(None, ge=1, le=MAX_ITEMS, description="at most this many questions per data set")
    rollout: RolloutConfig | None = Field(None, description="default: the job's (for a checkpoint), else the defaults")

    @classmethod
    def parse(cls, payload: Any) -> EvaluationRequest:
        """Validate a request, raising ContractError naming every field that is wrong."""
        try:
            request = cls.model_validate(payload)
        except ValidationError as exc:
            raise ContractError(describe_validation_error(exc, cls.__name__)) from None
        problems = []
        if (request.model is None) == (request.job_id is None):
            problems.append("model: give either model (a model to evaluate) or job_id (a training job's checkpoint)")
        if request.step is not None and request.job_id is None:
            problems.append("step: a checkpoint step needs job_id")
        if not request.datasets and not request.paths:
            problems.append(f"datasets: name at least one data set ({', '.join(EVAL_SETS)}) or JSONL file in paths")
        for field_name, values in (("datasets", request.datasets), ("paths", request.paths)):
            repeated = sorted(value for value, times in Counter(values).items() if times > 1)
            if repeated:
                problems.append(f"{field_name}: {', '.join(repeated)} named more than once")
        if problems:
            raise ContractError("; ".join(f"{cls.__name__}.{problem}" for problem in problems))
        return request


class EvaluationDataset(BaseModel):
    name: str | None = Field(description="the name its EM is reported under (None: the rows' own `source`)")
    path: str
    limit: int | None = None


class EvaluationProgress(BaseModel):
    done: int = Field(description="questions answered and scored")
    total: int


class Evaluation(BaseModel):
    """An evaluation as the API shows it."""

    id: str
    name: str
    state: JobState
    message: str
    model: str = Field(description="the weights evaluated (for a job's checkpoint: its policy folder)")
    job_id: str | None = Field(None, description="the training job whose checkpoint is evaluated")
    step: int | None = Field(None, description="that checkpoint's step")
    datasets: list[EvaluationDataset]
    progress: EvaluationProgress | None = None
    results: dict[str, float] | None = Field(None, description="exact match per data set, once evaluated")
    created_at: float
    started_at: float | None
    finished_at: float | None


class EvaluationList(BaseModel):
    evaluations: list[Evaluation]
    total: int
    offset: int
    limit: int


def _label(path: Path) -> str:
    """A data set name from a file name: `my eval.jsonl` -> `my_eval`."""
    return re.sub(r"[^\w.-]", "_", path.stem).lstrip("._-")[:64] or "data"


def eval_sources(request: EvaluationRequest, shared_data_dir: Path, check_files: bool) -> list[DataSource]:
    """The eval sources of a request: named sets from the data kit's `eval/` folder, then the JSONL paths.
    Learners read the same paths (shared storage is mounted alike everywhere); `check_files` where this process
    sees the learners' files too (else a learner names a missing file when it fails)."""
    sources: list[DataSource] = []
    for index, name in enumerate(request.datasets):
        path = shared_data_dir / "eval" / EVAL_SETS[name]
        if check_files and not path.is_file():
            raise ContractError(
                f"EvaluationRequest.datasets.{index}: {name!r} is {path}, which does not exist here; "
                "point SEARCHR1_SHARED_DATA_DIR at the data kit"
            )
        sources.append(DataSource(path=str(path), format="jsonl", limit=request.limit, label=name))
    names = set(request.datasets)
    for index, text in enumerate(request.paths):
        where = f"EvaluationRequest.paths.{index}"
        path = Path(text)
        if not path.is_absolute():
            raise ContractError(f"{where}: {text!r} is not an absolute path")
        if path.suffix.lower() != ".jsonl":
            raise ContractError(f"{where}: {text!r} is not a .jsonl file")
        if check_files and not path.is_file():
            raise ContractError(f"{where}: no such file {text!r}")
        label = _label(path)
        if label in names:
            raise ContractError(f"{where}: its data set name {label!r} is taken by another data set; rename the file")
        names.add(label)
        sources.append(DataSource(path=str(path), format="jsonl", limit=request.limit, label=label))
    return sources


def checkpoint_of(job: JobRecord, checkpoints: list[JobEvent], step: int | None) -> tuple[int, str]:
    """(step, policy folder) of the job's checkpoint at `step`, or of its latest; ContractError when there is none.
    `checkpoints` are the job's checkpoint events, which name the policy's HF folder."""
    by_step = {event.step: str(event.data["policy"]) for event in checkpoints
               if event.step is not None and "policy" in event.data}  # fmt: skip
    if not by_step:
        raise ContractError(f"EvaluationRequest.job_id: job {job.id} ({job.state.value}) has no checkpoint yet")
    if step is None:
        step = max(by_step)
    elif step not in by_step:
        steps = ", ".join(str(s) for s in sorted(by_step))
        raise ContractError(f"EvaluationRequest.step: job {job.id} has no checkpoint at step {step}; it has {steps}")
    return step, by_step[step]


def eval_spec(request: EvaluationRequest, model: str, sources: list[DataSource], rollout: RolloutConfig) -> JobSpec:
    """The JobSpec of an evaluation (its algorithm is unused: nothing is trained)."""
    return JobSpec(
        name=request.name, kind="eval", model=model, algorithm=GRPOConfig(), data=DataConfig(eval=sources),
        rollout=rollout,
    )  # fmt: skip


def _count(value: object) -> bool:
    """Whether an event's value is a count (a learner's events are read, not trusted: NaN or text is not one)."""
    return isinstance(value, int | float) and math.isfinite(value)


def view(job: JobRecord, events: list[JobEvent]) -> Evaluation:
    """The API's view of an evaluation job from its record and its events (progress, results)."""
    progress = results = None
    for event in events:
        done, total = event.data.get("done"), event.data.get("total")
        if event.event == "progress" and event.data.get("phase") == "eval" and _count(done) and _count(total):
            progress = EvaluationProgress(done=int(done), total=int(total))
        elif event.event == "eval":
            results = {key[len(EM_PREFIX) :]: float(v) for key, v in event.data.items()
                       if key.startswith(EM_PREFIX) and isinstance(v, int | float)}  # fmt: skip
    datasets = [EvaluationDataset(name=s.label, path=s.path, limit=s.limit) for s in job.spec.data.eval]
    return Evaluation(
        id=job.id, name=job.spec.name, state=job.state, message=job.message, model=job.spec.model,
        job_id=job.origin.get("job_id"), step=job.origin.get("step"), datasets=datasets, progress=progress,
        results=results, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
    )  # fmt: skip
