"""The jobs API over real HTTP, with a real Redis and real learner processes (a stand-in entrypoint)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import redis
from datakit import data_kit
from support import ApiServer, wait_until

from services.models import TINY_QWEN2
from services.processes import group_alive


def tiny_job(steps: int = 3, name: str = "tiny") -> dict:
    return {
        "preset": "paper-grpo",
        "overrides": {"name": name, "model": TINY_QWEN2, "schedule": {"total_steps": steps}},
    }


def test_auth_is_required_except_for_health_and_metrics(api: ApiServer) -> None:
    assert httpx.get(api.url + "/v1/jobs").status_code == 401
    assert httpx.get(api.url + "/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert api.client.get("/v1/jobs").status_code == 200
    assert httpx.get(api.url + "/healthz").status_code == 200
    assert "searchr1_jobs" in httpx.get(api.url + "/metrics/").text
    assert httpx.get(api.url + "/openapi.json").json()["paths"]["/v1/jobs"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"preset": "paper-grpo", "overrides": {"algorithm": {"group_size": 0}}}, "JobSpec.algorithm.grpo.group_size"),
        ({"preset": "paper-dpo"}, "unknown preset 'paper-dpo'"),
        ({"model": "m"}, "JobSpec.algorithm: Field required"),
        ({"preset": "paper-ppo", "extra": 1}, "only 'overrides' may be given"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_invalid_submissions_answer_422_with_the_field_path(api: ApiServer, body: object, expected: str) -> None:
    response = api.client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert expected in response.json()["detail"]
    assert api.client.get("/v1/jobs").json()["total"] == 0, "a rejected job must not be stored"


def test_jobs_that_cannot_run_here_are_refused_at_submission(api: ApiServer, tmp_path: Path) -> None:
    """A two-core machine with no GPU, as the embedded platform tells its API (the rollout tier keeps one CPU)."""
    api.env.update(SEARCHR1_LEARNER_CPUS="1", SEARCHR1_LEARNER_GPUS="0", SEARCHR1_DATA_DIR=str(tmp_path))
    api.restart()
    (tmp_path / "train.jsonl").write_text('{"id": "1", "question": "q?", "golden_answers": ["a"], "source": "t"}\n')

    def refused(preset: str, **overrides: object) -> str:
        response = api.client.post("/v1/jobs", json={"preset": preset, "overrides": overrides})
        assert response.status_code == 422, response.text
        return response.json()["detail"]

    unplaceable = refused("paper-grpo", model=TINY_QWEN2)
    assert "the learner asks for 8 GPU(s) and 8 CPU(s) on 1 node(s)" in unplaceable
    assert "this platform has 0 GPU(s) and 1 CPU(s) for learners" in unplaceable and "cpu-small" in unplaceable
    mine = {"train": [{"path": "train.jsonl"}], "eval": []}  # in place of the demo's files the preset names
    typo = refused("cpu-small", model="smollm2-135m-instruc", data=mine)
    assert typo.startswith("JobSpec.model: 'smollm2-135m-instruc' is not an offline registry name (the closest is "
                           "'smollm2-135m-instruct'")  # fmt: skip
    missing = refused("cpu-small", data={"train": [{"path": "train.jsonl"}], "eval": [{"path": "nope.jsonl"}]})
    assert missing == f"JobSpec.data.eval.0.path: no such file {tmp_path / 'nope.jsonl'}", "read from the data dir"
    assert api.client.get("/v1/jobs").json()["total"] == 0, "a refused job is not stored"
    hub_data = {"train": [{"path": "PeterJinGo/nq_hotpotqa_train", "format": "hf"}], "eval": []}
    for fits in ({"data": mine}, {"model": "Qwen/Qwen2.5-0.5B", "data": hub_data}):
        response = api.client.post("/v1/jobs", json={"preset": "cpu-small", "overrides": fits})
        assert response.status_code == 201, response.text  # hub ids are the learner's to fetch
    evaluation = api.client.post("/v1/evaluations", json={"model": "smollm2-135m-instruc", "datasets": ["nq"]})
    assert evaluation.status_code == 422 and "the closest is 'smollm2-135m-instruct'" in evaluation.json()["detail"]


def test_job_runs_to_success_with_metrics_checkpoints_and_events(api: ApiServer) -> None:
    job = api.client.post("/v1/jobs", json=tiny_job(steps=3)).json()
    assert job["state"] == "QUEUED" and job["total_steps"] == 3
    done = api.wait_state(job["id"], "SUCCEEDED")
    assert done["step"] == 3 and done["metrics"]["reward_mean"] == pytest.approx(0.3)
    history = api.client.get(f"/v1/jobs/{job['id']}/metrics").json()["history"]
    assert [h["step"] for h in history] == [1, 2, 3]
    [checkpoint] = api.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["checkpoints"]
    assert checkpoint["path"].endswith("checkpoint-final")
    sse = api.client.get(f"/v1/jobs/{job['id']}/events", params={"follow": False}).text
    states = [line.split('"state":"')[1].split('"')[0] for line in sse.splitlines() if '"state":"' in line]
    assert states[0] == "QUEUED" and states[-1] == "SUCCEEDED"
    assert {"STARTING", "RUNNING"} <= set(states)
    learner_log = Path(api.env["SEARCHR1_WORK_DIR"]) / "jobs" / job["id"] / "learner.log"
    assert learner_log.exists()


def test_one_job_at_a_time_fifo_and_cancel_ends_the_process_tree(api: ApiServer) -> None:
    api.env["FAKE_LEARNER_STEP_S"] = "5"
    api.restart()
    first = api.client.post("/v1/jobs", json=tiny_job(steps=100, name="first")).json()
    second = api.client.post("/v1/jobs", json=tiny_job(steps=1, name="second")).json()
    running = api.wait_state(first["id"], "RUNNING")
    assert api.client.get(f"/v1/jobs/{second['id']}").json()["state"] == "QUEUED"
    assert [j["id"] for j in api.client.get("/v1/jobs", params={"state": "QUEUED"}).json()["jobs"]] == [second["id"]]
    pid = running_pid(api, first["id"])
    cancelled = api.client.post(f"/v1/jobs/{first['id']}/cancel").json()
    assert cancelled["state"] == "CANCELLED"
    wait_until(lambda: not group_alive(pid), 15, "the learner process to end")
    api.wait_state(second["id"], "RUNNING", timeout_s=30)
    assert api.client.post(f"/v1/jobs/{first['id']}/cancel").status_code == 409
    assert running["started_at"] is not None


def test_jobs_survive_an_api_restart_and_failures_are_reported(api: ApiServer) -> None:
    done = api.client.post("/v1/jobs", json=tiny_job(steps=1, name="done")).json()
    api.wait_state(done["id"], "SUCCEEDED")
    api.env["FAKE_LEARNER_EXIT"] = "3"
    api.restart()
    assert api.client.get(f"/v1/jobs/{done['id']}").json()["state"] == "SUCCEEDED"
    failing = api.client.post("/v1/jobs", json=tiny_job(name="failing")).json()
    failed = api.wait_state(failing["id"], "FAILED")
    assert "exited with code 3" in failed["message"]
    assert api.client.get("/v1/jobs/nope").status_code == 404


def test_a_learner_outlives_a_killed_api_and_the_next_api_sees_the_job_through(api: ApiServer) -> None:
    """SIGKILL, as a crash or an OOM kill: the learner runs in a session of its own and goes on; the next API
    process follows it by its pid and its events to the end (the fault suite does it to a real job)."""
    api.env["FAKE_LEARNER_STEP_S"] = "1"
    api.restart()
    job = api.client.post("/v1/jobs", json=tiny_job(steps=4, name="outlives")).json()
    api.wait_state(job["id"], "RUNNING")
    pid = running_pid(api, job["id"])
    assert api.process is not None
    api.process.kill()
    api.process.wait()
    assert group_alive(pid), "the learner did not go down with the API"
    api.start()
    done = api.wait_state(job["id"], "SUCCEEDED", timeout_s=30)
    assert done["step"] == 4
    assert [h["step"] for h in api.client.get(f"/v1/jobs/{job['id']}/metrics").json()["history"]] == [1, 2, 3, 4]


def running_pid(api: ApiServer, job_id: str) -> int:
    """The learner's pid, as the launcher recorded it in the job store."""
    client = redis.Redis.from_url(api.env["SEARCHR1_REDIS_URL"])
    raw = client.hget(f"{api.env['SEARCHR1_KEY_PREFIX']}:jobs:{job_id}", "handle")
    return int(json.loads(raw)["pid"])


# -- evaluations --------------------------------------------------------------------------------------------------


def evaluation_done(api: ApiServer, evaluation_id: str, state: str = "SUCCEEDED") -> dict:
    api.wait_state(evaluation_id, state)
    return api.client.get(f"/v1/evaluations/{evaluation_id}").json()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"datasets": ["nq"]}, "EvaluationRequest.model: give either model (a model to evaluate) or job_id"),
        ({"model": "m", "job_id": "j", "datasets": ["nq"]}, "give either model"),
        ({"model": "m"}, "EvaluationRequest.datasets: name at least one data set (nq, triviaqa"),
        ({"model": "m", "datasets": ["squad"]}, "EvaluationRequest.datasets.0: Input should be 'nq'"),
        ({"model": "m", "datasets": ["nq", "nq"]}, "EvaluationRequest.datasets: nq named more than once"),
        ({"model": "m", "datasets": ["nq"], "limit": 0}, "EvaluationRequest.limit: Input should be greater than"),
        ({"model": "m", "datasets": ["nq"], "step": 2}, "EvaluationRequest.step: a checkpoint step needs job_id"),
        ({"model": "m", "paths": ["eval.jsonl"]}, "EvaluationRequest.paths.0: 'eval.jsonl' is not an absolute path"),
        ({"model": "m", "paths": ["/no/such/eval.jsonl"]}, "EvaluationRequest.paths.0: no such file"),
        ({"model": "m", "paths": [__file__]}, "test_api.py' is not a .jsonl file"),
        ({"model": "m", "datasets": ["nq"], "steps": 1}, "EvaluationRequest.steps: Extra inputs are not permitted"),
        ({"model": "m", "datasets": ["nq"], "rollout": {"topk": 0}}, "EvaluationRequest.rollout.topk"),
        ([1], "request body must be a JSON object: an EvaluationRequest"),
    ],
)
def test_invalid_evaluations_answer_422_naming_the_field(api: ApiServer, body: object, expected: str) -> None:
    response = api.client.post("/v1/evaluations", json=body)
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert api.client.get("/v1/evaluations").json()["total"] == 0, "a rejected evaluation must not be stored"


def test_a_model_is_evaluated_on_data_kit_sets_and_jsonl_files(api: ApiServer, tmp_path: Path) -> None:
    kit = data_kit(tmp_path / "kit").path / "eval"
    api.env.update(SEARCHR1_SHARED_DATA_DIR=str(kit.parent))
    api.restart()
    mine = tmp_path / "my questions.jsonl"
    rows = [{"id": str(i), "question": f"q{i}?", "golden_answers": ["a"], "source": "mine:test"} for i in range(5)]
    mine.write_text("".join(json.dumps(row) + "\n" for row in rows))
    body = {"name": "smoke", "model": TINY_QWEN2, "datasets": ["nq", "hotpotqa"], "paths": [str(mine)], "limit": 4}
    created = api.client.post("/v1/evaluations", json=body)
    assert created.status_code == 201, created.text
    evaluation = created.json()
    assert evaluation["id"].startswith("smoke-") and evaluation["state"] == "QUEUED"
    assert evaluation["model"] == TINY_QWEN2 and evaluation["results"] is None and evaluation["job_id"] is None
    assert evaluation["datasets"] == [
        {"name": "nq", "path": str(kit / "nq_test.jsonl"), "limit": 4},
        {"name": "hotpotqa", "path": str(kit / "hotpotqa_dev.jsonl"), "limit": 4},
        {"name": "my_questions", "path": str(mine), "limit": 4},
    ]
    done = evaluation_done(api, evaluation["id"])
    # The stand-in learner reports EM = 1 / (questions it read): 4 of each set, the limit.
    assert done["results"] == {"nq": 0.25, "hotpotqa": 0.25, "my_questions": 0.25}
    assert done["progress"] == {"done": 12, "total": 12}
    assert done["started_at"] is not None and done["finished_at"] >= done["started_at"]
    job = api.client.get(f"/v1/jobs/{evaluation['id']}").json()
    assert (job["kind"], job["total_steps"], job["spec"]["kind"]) == ("eval", 0, "eval")
    assert [j["id"] for j in api.client.get("/v1/jobs", params={"kind": "eval"}).json()["jobs"]] == [job["id"]]
    assert api.client.get("/v1/jobs", params={"kind": "train"}).json()["total"] == 0
    assert httpx.get(api.url + "/openapi.json").json()["paths"]["/v1/evaluations"]["post"]


def test_a_job_checkpoint_is_evaluated_latest_or_by_step(api: ApiServer) -> None:
    train = api.client.post("/v1/jobs", json=tiny_job(steps=2, name="trained")).json()
    api.wait_state(train["id"], "SUCCEEDED")
    latest = api.client.post("/v1/evaluations", json={"job_id": train["id"], "datasets": ["bamboogle"], "limit": 2})
    assert latest.status_code == 201, latest.text
    policy = str(Path(api.env["SEARCHR1_WORK_DIR"]) / "jobs" / train["id"] / "checkpoint-final" / "policy")
    assert (latest.json()["model"], latest.json()["job_id"], latest.json()["step"]) == (policy, train["id"], 2)
    spec = api.client.get(f"/v1/jobs/{latest.json()['id']}").json()["spec"]
    assert spec["rollout"] == train["spec"]["rollout"], "a checkpoint is evaluated with its job's rollout settings"
    assert evaluation_done(api, latest.json()["id"])["results"] == {"bamboogle": 0.5}

    by_step = api.client.post("/v1/evaluations", json={"job_id": train["id"], "step": 2, "datasets": ["musique"]})
    assert by_step.status_code == 201 and by_step.json()["step"] == 2
    missing = api.client.post("/v1/evaluations", json={"job_id": train["id"], "step": 1, "datasets": ["nq"]})
    expected = f"EvaluationRequest.step: job {train['id']} has no checkpoint at step 1; it has 2"
    assert missing.status_code == 422 and missing.json()["detail"] == expected
    unknown = api.client.post("/v1/evaluations", json={"job_id": "nope", "datasets": ["nq"]})
    assert unknown.status_code == 404 and "EvaluationRequest.job_id: no job with id 'nope'" in unknown.json()["detail"]
    none_yet = api.client.post("/v1/evaluations", json={"job_id": latest.json()["id"], "datasets": ["nq"]})
    assert none_yet.status_code == 422 and "has no checkpoint yet" in none_yet.json()["detail"]

    listed = api.client.get("/v1/evaluations").json()
    assert [e["id"] for e in listed["evaluations"]] == [by_step.json()["id"], latest.json()["id"]]
    assert api.client.get(f"/v1/evaluations/{train['id']}").status_code == 404, "a training job is no evaluation"


def test_a_failed_evaluation_says_why(api: ApiServer) -> None:
    api.env["FAKE_LEARNER_EXIT"] = "3"
    api.restart()
    evaluation = api.client.post("/v1/evaluations", json={"model": TINY_QWEN2, "datasets": ["nq"]}).json()
    failed = evaluation_done(api, evaluation["id"], "FAILED")
    assert "exited with code 3" in failed["message"] and failed["results"] is None
