"""Evaluation requests into JobSpecs, and evaluation jobs into the API's view (no I/O but the data kit's files)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from datakit import data_kit

from services.api.evaluations import EVAL_SETS, EvaluationRequest, checkpoint_of, eval_sources, eval_spec, view
from services.api.store import JobRecord
from services.contracts import ContractError, JobEvent, JobState, RolloutConfig


def test_every_named_set_is_a_file_of_the_data_kit(tmp_path: Path) -> None:
    kit = data_kit(tmp_path).path
    request = EvaluationRequest.parse({"model": "m", "datasets": list(EVAL_SETS), "limit": 3})
    sources = eval_sources(request, kit, check_files=True)
    assert [(s.label, Path(s.path).parent, s.limit) for s in sources] == [(name, kit / "eval", 3) for name in EVAL_SETS]


def test_without_file_checks_paths_on_storage_the_api_cannot_see_are_taken_as_given() -> None:
    # A KubeRay learner mounts the shared volume at /data; the API does not.
    request = EvaluationRequest.parse({"model": "m", "datasets": ["2wiki"], "paths": ["/data/mine/Test Set.jsonl"]})
    sources = eval_sources(request, Path("/data"), check_files=False)
    assert [(s.label, s.path) for s in sources] == [
        ("2wiki", "/data/eval/2wikimultihopqa_dev.jsonl"), ("Test_Set", "/data/mine/Test Set.jsonl"),
    ]  # fmt: skip
    with pytest.raises(ContractError, match="is taken by another data set"):
        eval_sources(EvaluationRequest.parse({"model": "m", "datasets": ["nq"], "paths": ["/d/nq.jsonl"]}),
                     Path("/data"), check_files=False)  # fmt: skip
    spec = eval_spec(request, "m", sources, RolloutConfig(max_turns=2))
    assert (spec.kind, spec.model, spec.data.train, spec.rollout.max_turns) == ("eval", "m", [], 2)


def record(job_id: str, state: JobState = JobState.SUCCEEDED) -> JobRecord:
    request = EvaluationRequest.parse({"model": "m", "datasets": ["nq"]})
    spec = eval_spec(request, "m", eval_sources(request, Path("/data"), check_files=False), RolloutConfig())
    return JobRecord(id=job_id, spec=spec, state=state, created_at=time.time(), updated_at=time.time())


def test_a_checkpoint_is_the_latest_or_the_named_step_and_the_last_saved_of_a_step() -> None:
    def saved(step: int, policy: str) -> JobEvent:
        return JobEvent(job_id="j", event="checkpoint", step=step, data={"path": "x", "policy": policy})

    events = [saved(1, "/a/1"), saved(2, "/a/2"), saved(2, "/b/2")]  # step 2 saved again after a resume
    assert checkpoint_of(record("j"), events, None) == (2, "/b/2")
    assert checkpoint_of(record("j"), events, 1) == (1, "/a/1")
    with pytest.raises(ContractError, match=r"EvaluationRequest\.step: job j has no checkpoint at step 3; it has 1, 2"):
        checkpoint_of(record("j"), events, 3)
    with pytest.raises(ContractError, match=r"EvaluationRequest.job_id: job j \(RUNNING\) has no checkpoint yet"):
        checkpoint_of(record("j", JobState.RUNNING), [], None)


def test_the_view_shows_the_last_progress_and_the_em_per_data_set() -> None:
    def progress(done: int) -> JobEvent:
        return JobEvent(job_id="e", event="progress", step=0, data={"phase": "eval", "done": done, "total": 4})

    result = JobEvent(job_id="e", event="eval", step=0, data={"eval_em/nq": 0.25})
    shown = view(record("e"), [progress(0), progress(3), progress(4), result])
    assert shown.progress is not None and (shown.progress.done, shown.progress.total) == (4, 4)
    assert shown.results == {"nq": 0.25}
    assert [(d.name, d.path) for d in shown.datasets] == [("nq", "/data/eval/nq_test.jsonl")]
    assert view(record("e", JobState.QUEUED), []).results is None
