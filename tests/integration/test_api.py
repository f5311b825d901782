"""The jobs API over real HTTP, with a real Redis and real learner processes (a stand-in entrypoint)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import redis
from support import ApiServer, wait_until

from services.processes import group_alive


def tiny_job(steps: int = 3, name: str = "tiny") -> dict:
    return {"preset": "paper-grpo", "overrides": {"name": name, "model": "tiny", "schedule": {"total_steps": steps}}}


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


def running_pid(api: ApiServer, job_id: str) -> int:
    """The learner's pid, as the launcher recorded it in the job store."""
    client = redis.Redis.from_url(api.env["SEARCHR1_REDIS_URL"])
    raw = client.hget(f"{api.env['SEARCHR1_KEY_PREFIX']}:jobs:{job_id}", "handle")
    return int(json.loads(raw)["pid"])
