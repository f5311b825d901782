"""The KubeRay launcher: manifests valid against the real CRD schema, and the real Kubernetes client talking to
a loopback API server that answers with recorded KubeRay responses (no cluster can run here)."""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes import client as k8s

from services.api.kuberay import KubeRayLauncher, KubeRaySettings, build_rayjob, build_spec_configmap, status_of
from services.api.scheduler import Scheduler
from services.api.store import JobRecord, JobStore
from services.config import Settings
from services.contracts import JobSpec, JobState
from services.streams import Streams, connect

SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "schemas"
RAYJOB_SCHEMA = SCHEMAS / "ray.io_v1_RayJob.json.gz"

# Status blocks as KubeRay v1.6 reports them through a RayJob's life.
RECORDED_STATUS = {
    "initializing": {"jobDeploymentStatus": "Initializing", "rayClusterName": "c"},
    "running": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "jobId": "x"},
    "succeeded": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "message": "Job finished successfully."},
    "failed": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed", "message": "exit 1"},
    "retrying": {"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED", "failed": 1, "message": "exit 1"},
}


def job_record(job_id: str = "tiny-abc123", gpus: int = 8) -> JobRecord:
    overrides = {"name": "tiny", "resources": {"learner_gpus_per_node": gpus, "learner_nodes": 2}}
    return JobRecord(
        id=job_id,
        spec=JobSpec.from_preset("paper-ppo", overrides),
        state=JobState.STARTING,
        created_at=time.time(),
        updated_at=time.time(),
    )


@pytest.mark.skipif(not RAYJOB_SCHEMA.exists(), reason="../shared/schemas (KubeRay CRD schemas) is not beside the repo")
def test_rayjob_manifest_is_valid_against_the_kuberay_crd_schema() -> None:
    settings = KubeRaySettings(namespace="ml", data_pvc="searchr1-data", env_from_secret="searchr1-env")
    manifest = build_rayjob(job_record(), settings)
    schema = json.loads(gzip.decompress(RAYJOB_SCHEMA.read_bytes()))
    jsonschema.validate(manifest, schema)
    worker = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert worker["replicas"] == 2
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert "--job-id tiny-abc123" in manifest["spec"]["entrypoint"]
    assert manifest["spec"]["backoffLimit"] == 0, "no retries unless the job asks"
    retried = job_record()
    retried.spec = retried.spec.model_copy(
        update={"schedule": retried.spec.schedule.model_copy(update={"max_restarts": 3})}
    )
    retrying = build_rayjob(retried, settings)
    jsonschema.validate(retrying, schema)
    assert retrying["spec"]["backoffLimit"] == 3, "KubeRay retries the learner as often as the job allows"
    broken = copy.deepcopy(manifest)
    broken["spec"]["shutdownAfterJobFinishes"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    configmap = build_spec_configmap(job_record(), settings, "uid-1")
    kubernetes_validate.validate(configmap, "1.33.0", strict=True)
    assert JobSpec.parse(json.loads(configmap["data"]["job.json"])).resources.learner_nodes == 2


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        ("initializing", "RUNNING"),
        ("running", "RUNNING"),
        ("succeeded", "SUCCEEDED"),
        ("failed", "FAILED"),
        ("retrying", "RUNNING"),
    ],
)
def test_rayjob_status_maps_to_job_state(recorded: str, expected: str) -> None:
    status = status_of({"status": RECORDED_STATUS[recorded]})
    assert status.state.value == expected
    if expected == "FAILED":
        assert "exit 1" in status.message


class FakeKubeApi(ThreadingHTTPServer):
    """Enough of the Kubernetes API for RayJobs and ConfigMaps, answering from recorded objects."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, Any]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.status_script: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeKubeApi

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length", 0))
        return json.loads(self.rfile.read(length)) if length else None

    def do_POST(self) -> None:
        body = self._body()
        self.server.requests.append(("POST", self.path, body))
        stored = {**body, "metadata": {**body["metadata"], "uid": f"uid-{body['metadata']['name']}"}}
        self.server.objects[f"{self.path}/{body['metadata']['name']}"] = stored
        self._reply(201, stored)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, None))
        obj = self.server.objects.get(self.path)
        if obj is None:
            self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            return
        if self.server.status_script:
            obj = {**obj, "status": RECORDED_STATUS[self.server.status_script.pop(0)]}
        self._reply(200, obj)

    def do_DELETE(self) -> None:
        self.server.requests.append(("DELETE", self.path, self._body()))
        existed = self.server.objects.pop(self.path, None)
        self._reply(200 if existed else 404, {"kind": "Status", "code": 200 if existed else 404})


@pytest.fixture
def kube() -> FakeKubeApi:
    server = FakeKubeApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def launcher_for(kube: FakeKubeApi, **settings: Any) -> KubeRayLauncher:
    configuration = k8s.Configuration(host=kube.url)
    return KubeRayLauncher(KubeRaySettings(namespace="ml", **settings), k8s.ApiClient(configuration))


def test_launcher_creates_polls_and_deletes_through_the_kubernetes_client(kube: FakeKubeApi) -> None:
    launcher = launcher_for(kube)
    job = job_record()

    async def go() -> None:
        handle = await launcher.start(job)
        assert handle.pop("launched_at") == pytest.approx(time.time(), abs=10)
        assert handle == {"rayjob": "tiny-abc123", "namespace": "ml"}
        job.handle = handle
        kube.status_script = ["initializing", "running", "succeeded"]
        states = [(await launcher.poll(job)).state for _ in range(3)]
        assert states == [JobState.RUNNING, JobState.RUNNING, JobState.SUCCEEDED]
        await launcher.cancel(job)
        assert (await launcher.poll(job)).state is JobState.FAILED  # gone: 404

    asyncio.run(go())
    posts = [(path, body) for method, path, body in kube.requests if method == "POST"]
    assert posts[0][0] == "/apis/ray.io/v1/namespaces/ml/rayjobs"
    assert posts[1][0] == "/api/v1/namespaces/ml/configmaps"
    assert posts[1][1]["metadata"]["ownerReferences"][0]["uid"] == "uid-tiny-abc123"
    assert ("DELETE", "/apis/ray.io/v1/namespaces/ml/rayjobs/tiny-abc123") in [r[:2] for r in kube.requests]


def test_a_learner_that_does_not_start_in_time_fails_naming_what_it_asked_for(kube: FakeKubeApi) -> None:
    launcher = launcher_for(kube, start_timeout_s=0.2, worker_cpu="8", worker_memory="64Gi")
    job = job_record(gpus=8)

    async def go() -> list:
        job.handle = await launcher.start(job)
        kube.status_script = ["initializing", "initializing"]
        waiting = await launcher.poll(job)
        await asyncio.sleep(0.3)
        return [waiting, await launcher.poll(job)]

    waiting, failed = asyncio.run(go())
    assert waiting.state is JobState.RUNNING, "within the start timeout a pending RayJob is left to the cluster"
    assert failed.state is JobState.FAILED
    assert "the learner did not start within 0 s: RayJob tiny-abc123 is still Initializing" in failed.message
    assert "2 worker pod(s) of 8 CPU, 64Gi memory and 8 GPU(s) each" in failed.message
    assert ("DELETE", "/apis/ray.io/v1/namespaces/ml/rayjobs/tiny-abc123") in [r[:2] for r in kube.requests], (
        "its pending pods are released"
    )


def test_scheduler_settles_a_job_from_rayjob_status(kube: FakeKubeApi, settings: Settings) -> None:
    async def go() -> list[str]:
        streams = Streams(connect(settings), settings)
        store = JobStore(streams)
        scheduler = Scheduler(store, launcher_for(kube), max_running=1)
        job = await store.create(JobSpec.from_preset("paper-grpo", {"name": "on-k8s"}))
        kube.status_script = ["running", "failed"]
        await scheduler.tick()  # admits and launches
        await scheduler.tick()  # RUNNING per KubeRay: still active
        await scheduler.tick()  # FAILED per KubeRay
        record = await store.get(job.id)
        events = [e.state.value for _, e in await store.events(job.id) if e.state]
        await streams.redis.aclose()
        assert record.state is JobState.FAILED and "exit 1" in record.message
        return events

    assert asyncio.run(go()) == ["QUEUED", "STARTING", "FAILED"]
