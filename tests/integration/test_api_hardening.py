"""Bad input sent to the real jobs API (real Redis, real process): each gets a 4xx naming what is wrong, other
clients are served as before, and nothing stored is lost."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
import redis
from support import ApiServer, wait_until

from services.api.app import ApiSettings
from services.api.client import JobsClient
from services.config import Settings
from services.contracts import ContractError, JobEvent, JobSpec
from services.models import TINY_QWEN2
from services.streams import Streams, connect


def tiny_job(name: str = "ok", **schedule: object) -> dict:
    return {
        "preset": "paper-grpo",
        "overrides": {"name": name, "model": TINY_QWEN2, "schedule": {"total_steps": 1, **schedule}},
    }


def post_raw(api: ApiServer, path: str, text: str | bytes, content_type: str = "application/json") -> httpx.Response:
    return api.client.post(path, content=text, headers={"Content-Type": content_type})


def store_keys(api: ApiServer) -> redis.Redis:
    return redis.Redis.from_url(api.env["SEARCHR1_REDIS_URL"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ('{"algorithm": {"kl_coef": 1e999}}', "JobSpec.algorithm.grpo.kl_coef: Input should be a finite number"),
        ('{"rollout": {"temperature": NaN}}', "JobSpec.rollout.temperature: Input should be a finite number"),
        ('{"rollout": {"request_timeout_s": Infinity}}', "JobSpec.rollout.request_timeout_s"),
        ('{"rollout": {"request_timeout_s": 1e300}}', "JobSpec.rollout.request_timeout_s: Input should be less"),
        ('{"schedule": {"total_steps": 1000000000000000000000000000000}}', "JobSpec.schedule.total_steps"),
        ('{"schedule": {"seed": -1}}', "JobSpec.schedule.seed"),
        (json.dumps({"model": "m" * 10_000}), "JobSpec.model: String should have at most 4096 characters"),
        ('{"algorithm": {"adam_betas": [0.9, -Infinity]}}', "JobSpec.algorithm.grpo.adam_betas.1"),
    ],
)
def test_non_finite_and_unbounded_values_are_refused(api: ApiServer, overrides: str, expected: str) -> None:
    response = post_raw(api, "/v1/jobs", '{"preset": "paper-grpo", "overrides": ' + overrides + "}")
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    listing = api.client.get("/v1/jobs")
    assert listing.status_code == 200 and listing.json()["total"] == 0, "nothing refused is stored"


def test_an_undecodable_record_is_quarantined_and_listing_and_scheduling_go_on(api: ApiServer) -> None:
    """The record an older build stored for `kl_coef: 1e999` (null where a float belongs) next to good jobs."""
    prefix = api.env["SEARCHR1_KEY_PREFIX"]
    spec = json.loads(JobSpec.from_preset("paper-grpo", {"name": "poison", "model": TINY_QWEN2}).to_json())
    spec["algorithm"]["kl_coef"] = None
    bad_id = "poison-0123abcd"
    keys = store_keys(api)
    keys.hset(f"{prefix}:jobs:{bad_id}", mapping={"id": bad_id, "spec": json.dumps(spec), "state": "QUEUED",
                                                  "created_at": "1.0", "updated_at": "1.0", "step": 0})  # fmt: skip
    keys.zadd(f"{prefix}:jobs:index", {bad_id: 1.0})
    keys.rpush(f"{prefix}:jobs:queue", bad_id)

    good = api.client.post("/v1/jobs", json=tiny_job()).json()
    api.wait_state(good["id"], "SUCCEEDED")  # the scheduler's tick is not stuck on the bad record
    listing = api.client.get("/v1/jobs")
    assert listing.status_code == 200
    assert [job["id"] for job in listing.json()["jobs"]] == [good["id"]]
    assert listing.json()["quarantined"] == 1
    assert api.client.get("/v1/evaluations").status_code == 200
    assert api.client.get("/v1/jobs", params={"state": "QUEUED"}).json()["total"] == 0
    missing = api.client.get(f"/v1/jobs/{bad_id}")
    assert missing.status_code == 404 and "quarantined" in missing.json()["detail"]
    # Nothing lost: the record is kept, with the reason, for a person to fix or delete.
    assert keys.hget(f"{prefix}:jobs:{bad_id}", "spec") == json.dumps(spec).encode()
    assert b"kl_coef" in keys.hget(f"{prefix}:jobs:{bad_id}", "quarantined")
    assert keys.zscore(f"{prefix}:jobs:quarantine", bad_id) is not None
    assert bad_id.encode() not in keys.lrange(f"{prefix}:jobs:queue", 0, -1)
    assert "searchr1_api_jobs_quarantined_total 1.0" in httpx.get(api.url + "/metrics/").text


@pytest.mark.parametrize("job_id", ["index", "queue", "quarantine", "x" * 5000])
def test_job_ids_cannot_name_the_stores_own_keys(api: ApiServer, job_id: str) -> None:
    good = api.client.post("/v1/jobs", json=tiny_job()).json()
    for response in (api.client.get(f"/v1/jobs/{job_id}"), api.client.post(f"/v1/jobs/{job_id}/cancel"),
                     api.client.get(f"/v1/jobs/{job_id}/events", params={"follow": False})):  # fmt: skip
        assert response.status_code == 404, response.text
        assert "no job with id" in response.json()["detail"] and len(response.text) < 300
    assert api.client.get("/v1/jobs").json()["jobs"][0]["id"] == good["id"]
    assert api.client.post("/v1/evaluations", json={"job_id": job_id, "datasets": ["nq"]}).status_code in (404, 422)


def test_non_ascii_bearer_tokens_are_refused_not_crashed_on(api: ApiServer) -> None:
    for header in (b"Bearer \xc3\xa9t\xc3\xa9", b"Bearer \xff\xfe"):
        response = httpx.get(api.url + "/v1/jobs", headers={"Authorization": header})
        assert response.status_code == 403 and response.json()["detail"] == "wrong bearer token"
    assert api.client.get("/v1/jobs").status_code == 200


def test_a_non_ascii_configured_token_is_refused_at_startup() -> None:
    with pytest.raises(ContractError, match="api_token: Value error, the API token must be printable ASCII"):
        ApiSettings.load(api_token="s\u00e9cret")


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ('{"preset": "paper-grpo", "overrides": ' + '{"a": ' * 100 + "1" + "}" * 101, 422, "nests deeper than 32"),
        ("[" * 200_000 + "]" * 200_000, 422, "not valid JSON"),
        ('{"preset": "paper-grpo", "overrides": {"schedule": {"seed": 1' + "0" * 4300 + "}}}", 422, "4300 digits"),
        ('{"preset": "paper-grpo"' + " " * 2_000_000 + "}", 413, "larger than 1048576 bytes"),
        (b'{"preset": "\xff"}', 422, "not valid JSON"),
    ],
)
def test_hostile_json_gets_a_4xx(api: ApiServer, body: str | bytes, status: int, expected: str) -> None:
    for path in ("/v1/jobs", "/v1/evaluations"):
        response = post_raw(api, path, body)
        assert response.status_code == status, response.text[:500]
        assert expected in response.json()["detail"]
    assert api.client.get("/v1/jobs").json()["total"] == 0
    assert api.client.post("/v1/jobs", json=tiny_job()).status_code == 201, "the next client is served"


def test_evaluation_requests_with_many_paths_are_answered_at_once(api: ApiServer) -> None:
    paths = [f"/data/eval-{i}.jsonl" for i in range(20_000)]
    response = api.client.post("/v1/evaluations", json={"model": TINY_QWEN2, "paths": paths}, timeout=5)
    assert response.status_code == 422
    assert "EvaluationRequest.paths: List should have at most 64 items" in response.json()["detail"]


def test_without_a_token_posts_must_be_json_so_no_web_page_can_send_them(api: ApiServer) -> None:
    del api.env["SEARCHR1_API_TOKEN"]
    api.restart()
    plain = post_raw(api, "/v1/jobs", json.dumps(tiny_job()), content_type="text/plain")
    assert plain.status_code == 415 and "must be application/json" in plain.json()["detail"]
    form = post_raw(api, "/v1/jobs", "preset=paper-grpo", content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415
    assert api.client.get("/v1/jobs").json()["total"] == 0
    api.env["FAKE_LEARNER_STEP_S"] = "5"
    api.restart()
    job = api.client.post("/v1/jobs", json=tiny_job(total_steps=50)).json()
    assert httpx.post(f"{api.url}/v1/jobs/{job['id']}/cancel").status_code == 415, "a bodiless cancel is refused"
    assert api.client.get(f"/v1/jobs/{job['id']}").json()["state"] in ("QUEUED", "STARTING", "RUNNING")
    assert JobsClient(api.url, token="").cancel(job["id"])["state"] == "CANCELLED", "the CLI's cancel sends JSON"


def test_event_followers_are_bounded_and_a_closed_one_frees_its_place(api: ApiServer) -> None:
    api.env.update(SEARCHR1_MAX_EVENT_FOLLOWERS="2", FAKE_LEARNER_STEP_S="5")
    api.restart()
    job = api.client.post("/v1/jobs", json=tiny_job(total_steps=50)).json()
    url = f"/v1/jobs/{job['id']}/events"
    with api.client.stream("GET", url) as first, api.client.stream("GET", url) as second:
        assert first.status_code == second.status_code == 200
        lines = first.iter_lines()  # kept: a dropped iterator closes its stream
        assert next(lines).startswith("id: ")
        refused = api.client.get(url)
        assert refused.status_code == 429 and "2 event streams are followed already" in refused.json()["detail"]
        assert "QUEUED" in api.client.get(url, params={"follow": False}).text, "a one-off read is still served"
    wait_until(lambda: api.client.get(url, params={"follow": False}).status_code == 200, 5, "the API to answer")
    with api.client.stream("GET", url) as again:
        assert again.status_code == 200, "closing the followers freed their places"
    api.client.post(f"/v1/jobs/{job['id']}/cancel")


def test_a_diverged_metric_is_reported_without_breaking_the_listing(api: ApiServer) -> None:
    """A learner's NaN loss is an event like any other; JSON has no NaN, so the job's record leaves it out."""
    api.env["FAKE_LEARNER_STEP_S"] = "5"
    api.restart()
    job = api.client.post("/v1/jobs", json=tiny_job(total_steps=50)).json()
    api.wait_state(job["id"], "RUNNING")
    settings = Settings(redis_url=api.env["SEARCHR1_REDIS_URL"], key_prefix=api.env["SEARCHR1_KEY_PREFIX"])

    async def publish() -> None:
        streams = Streams(connect(settings), settings)
        data = {"loss": float("nan"), "kl": float("inf"), "reward_mean": 0.5}
        await streams.publish(streams.job(job["id"], "events"), JobEvent(job_id=job["id"], event="metrics",
                                                                         step=7, data=data))  # fmt: skip
        await streams.redis.aclose()

    asyncio.run(publish())
    wait_until(lambda: api.client.get(f"/v1/jobs/{job['id']}").json()["step"] == 7, 10, "the step to be recorded")
    assert api.client.get(f"/v1/jobs/{job['id']}").json()["metrics"] == {"reward_mean": 0.5}
    assert api.client.get("/v1/jobs").status_code == 200
    [seven] = [h for h in api.client.get(f"/v1/jobs/{job['id']}/metrics").json()["history"] if h["step"] == 7]
    assert seven == {"step": 7, "loss": None, "kl": None, "reward_mean": 0.5}
    api.client.post(f"/v1/jobs/{job['id']}/cancel")


def test_a_store_written_before_the_state_indexes_is_indexed_at_startup(api: ApiServer) -> None:
    """Jobs stored by an older build (no per-state index) keep being scheduled and listed by state."""
    api.env["FAKE_LEARNER_STEP_S"] = "5"
    api.restart()
    prefix = api.env["SEARCHR1_KEY_PREFIX"]
    running = api.client.post("/v1/jobs", json=tiny_job(name="old", total_steps=50)).json()
    api.wait_state(running["id"], "RUNNING")
    queued = api.client.post("/v1/jobs", json=tiny_job(name="waiting")).json()
    api.stop()
    keys = store_keys(api)
    keys.delete(*keys.keys(f"{prefix}:jobs:state:*"), f"{prefix}:jobs:state-indexed")
    api.start()
    assert [j["id"] for j in api.client.get("/v1/jobs", params={"state": "QUEUED"}).json()["jobs"]] == [queued["id"]]
    api.client.post(f"/v1/jobs/{running['id']}/cancel", json={})  # the scheduler sees it among the active jobs
    api.wait_state(queued["id"], "SUCCEEDED")
    assert api.client.get("/v1/jobs", params={"state": "CANCELLED"}).json()["total"] == 1
    assert 'searchr1_jobs{state="SUCCEEDED"} 1.0' in httpx.get(api.url + "/metrics/").text


def test_poison_events_neither_stall_the_scheduler_nor_break_listings(api: ApiServer, tmp_path: Path) -> None:
    api.env["FAKE_LEARNER_STEP_S"] = "1"
    api.restart()
    prefix = api.env["SEARCHR1_KEY_PREFIX"]
    job = api.client.post("/v1/jobs", json=tiny_job(total_steps=3)).json()
    questions = tmp_path / "mine.jsonl"
    questions.write_text('{"id": "1", "question": "q?", "golden_answers": ["a"], "source": "t"}\n')
    evaluation = api.client.post("/v1/evaluations", json={"model": TINY_QWEN2, "paths": [str(questions)]}).json()
    keys = store_keys(api)
    for target in (job["id"], evaluation["id"]):
        keys.xadd(f"{prefix}:job:{target}:events", {b"k": b"job_event", b"d": b"\x93broken"})
        keys.xadd(f"{prefix}:job:{target}:events", {b"other": b"field"})
    settings = Settings(redis_url=api.env["SEARCHR1_REDIS_URL"], key_prefix=prefix)

    async def publish() -> None:  # well-formed events with values a view cannot use
        streams = Streams(connect(settings), settings)
        stream = streams.job(evaluation["id"], "events")
        bad = {"phase": "eval", "done": float("nan"), "total": "many"}
        await streams.publish(stream, JobEvent(job_id=evaluation["id"], event="progress", data=bad))
        await streams.publish(stream, JobEvent(job_id=evaluation["id"], event="eval", data={"eval_em/t": "high"}))
        await streams.redis.aclose()

    asyncio.run(publish())
    assert api.client.get("/v1/evaluations").status_code == 200
    assert api.client.get(f"/v1/evaluations/{evaluation['id']}").status_code == 200
    api.wait_state(job["id"], "SUCCEEDED")  # the scheduler read past the poison
    api.wait_state(evaluation["id"], "SUCCEEDED")
    done = api.client.get(f"/v1/evaluations/{evaluation['id']}").json()
    assert done["results"] == {"mine": 1.0} and done["progress"] == {"done": 1, "total": 1}
    sse = api.client.get(f"/v1/jobs/{job['id']}/events", params={"follow": False}).text
    assert sse.count("an undecodable event was skipped") == 2 and '"state":"SUCCEEDED"' in sse


def test_ended_jobs_past_the_retention_are_deleted_with_their_streams(api: ApiServer) -> None:
    api.env.update(SEARCHR1_JOB_RETENTION_S="8", FAKE_LEARNER_STEP_S="1")
    api.restart()
    prefix = api.env["SEARCHR1_KEY_PREFIX"]
    keys = store_keys(api)
    done = api.client.post("/v1/jobs", json=tiny_job(name="short")).json()
    api.wait_state(done["id"], "SUCCEEDED")
    assert keys.exists(f"{prefix}:job:{done['id']}:events"), "kept while younger than the retention"
    running = api.client.post("/v1/jobs", json=tiny_job(name="long", total_steps=100)).json()
    wait_until(lambda: api.client.get(f"/v1/jobs/{done['id']}").status_code == 404, 20, "the ended job to expire")
    assert not keys.exists(f"{prefix}:jobs:{done['id']}", f"{prefix}:job:{done['id']}:events")
    time.sleep(max(0.0, running["created_at"] + 10 - time.time()))  # the running one is past the retention too
    assert [job["id"] for job in api.client.get("/v1/jobs").json()["jobs"]] == [running["id"]], "it has not ended"
    api.client.post(f"/v1/jobs/{running['id']}/cancel")
