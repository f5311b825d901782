"""The KubeRay launcher: one RayJob per training job, its JobSpec in a ConfigMap mounted on the Ray head.

The learner runs as the RayJob's entrypoint on a Ray cluster KubeRay creates for it (Ray Train workers with
GPUs), and KubeRay deletes the cluster when the job ends. RayJob status maps onto our job states.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field

from services.contracts import JobState

from .launchers import DEFAULT_ENTRYPOINT, LaunchStatus
from .store import JobRecord

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
SPEC_MOUNT = "/etc/searchr1"
PART_OF = "searchr1"
# The RayJob's submitter pod: the one pod the learners' NetworkPolicy lets reach the head's job API (8265).
SUBMITTER_ROLE = {"searchr1.io/role": "rayjob-submitter"}
# Ray writes its session files under /tmp and caches under $HOME; with those on emptyDirs the root stays read-only.
_SCRATCH = {"tmp": "/tmp", "home": "/home/searchr1"}
_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                 "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                       "capabilities": {"drop": ["ALL"]}}  # fmt: skip


class KubeRaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str = "default"
    image: str = "searchr1/searchr1-gpu:0.1.0"
    ray_version: str = "2.60.0"
    service_account: str | None = None
    entrypoint: str = DEFAULT_ENTRYPOINT
    data_pvc: str | None = Field(None, description="PVC with checkpoints and weights, mounted at /data")
    env_from_secret: str | None = Field(None, description="Secret whose keys become env (Redis URL, tokens)")
    env: dict[str, str] = Field(default_factory=dict)
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    worker_cpu: str = "8"
    worker_memory: str = "64Gi"
    ttl_seconds_after_finished: int = 3600
    request_timeout_s: float = 15.0
    start_timeout_s: float = Field(
        900.0, gt=0, description="a RayJob not running by then is deleted and its job failed, naming what it asked for"
    )


def rayjob_name(job_id: str) -> str:
    """Kubernetes names are at most 63 characters of [a-z0-9-]."""
    return job_id.lower()[:63].rstrip("-")


def build_rayjob(job: JobRecord, settings: KubeRaySettings) -> dict[str, Any]:
    """The RayJob manifest of a job (valid against the KubeRay v1 CRD schema)."""
    name = rayjob_name(job.id)
    resources = job.spec.resources
    output_dir = f"/data/jobs/{job.id}"
    env = [{"name": k, "value": v} for k, v in sorted(settings.env.items())]
    env_from = [{"secretRef": {"name": settings.env_from_secret}}] if settings.env_from_secret else []
    mounts = [{"name": "job-spec", "mountPath": SPEC_MOUNT, "readOnly": True}]
    mounts += [{"name": volume, "mountPath": path} for volume, path in _SCRATCH.items()]
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})  # Ray's object store
    volumes: list[dict[str, Any]] = [{"name": "job-spec", "configMap": {"name": f"{name}-spec"}}]
    volumes += [{"name": volume, "emptyDir": {}} for volume in _SCRATCH]
    volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    if settings.data_pvc:
        mounts.append({"name": "data", "mountPath": "/data"})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": settings.data_pvc}})

    def pod(container_name: str, cpu: str, memory: str, gpus: int) -> dict[str, Any]:
        limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
        if gpus:
            limits["nvidia.com/gpu"] = gpus
        spec: dict[str, Any] = {
            "containers": [
                {
                    "name": container_name,
                    "image": settings.image,
                    "env": env,
                    "envFrom": env_from,
                    "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
                    "volumeMounts": mounts,
                    "securityContext": _CONTAINER_SECURITY,
                }
            ],
            "volumes": volumes,
            "securityContext": _POD_SECURITY,
            "automountServiceAccountToken": False,  # learners never call the Kubernetes API
        }
        if settings.service_account:
            spec["serviceAccountName"] = settings.service_account
        return {"metadata": {"labels": {"app.kubernetes.io/part-of": PART_OF}}, "spec": spec}

    # KubeRay fills in the `ray job submit` command; it needs no token, volume or write access but /tmp.
    submitter = {
        "metadata": {"labels": {"app.kubernetes.io/part-of": PART_OF, **SUBMITTER_ROLE}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": _POD_SECURITY,
            "containers": [
                {
                    "name": "ray-job-submitter",
                    "image": settings.image,
                    "resources": {
                        "requests": {"cpu": "200m", "memory": "256Mi"},
                        "limits": {"cpu": "1", "memory": "1Gi"},
                    },
                    "securityContext": _CONTAINER_SECURITY,
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }

    workers = resources.learner_nodes
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": {"app.kubernetes.io/part-of": PART_OF, "searchr1.io/job": name},
        },
        "spec": {
            "entrypoint": " ".join(
                [
                    "python",
                    "-m",
                    settings.entrypoint,
                    "--job",
                    f"{SPEC_MOUNT}/job.json",
                    "--job-id",
                    job.id,
                    "--output-dir",
                    output_dir,
                ]
            ),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "submissionMode": "K8sJobMode",
            "submitterPodTemplate": submitter,
            # A failed submission is retried on a fresh cluster; the learner resumes from its last checkpoint.
            "backoffLimit": job.spec.schedule.max_restarts,
            "rayClusterSpec": {
                "rayVersion": settings.ray_version,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0"},
                    "template": pod("ray-head", settings.head_cpu, settings.head_memory, 0),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "learner",
                        "replicas": workers,
                        "minReplicas": workers,
                        "maxReplicas": workers,
                        "rayStartParams": {},
                        "template": pod(
                            "ray-worker", settings.worker_cpu, settings.worker_memory, resources.learner_gpus_per_node
                        ),
                    }
                ],
            },
        },
    }


def build_spec_configmap(job: JobRecord, settings: KubeRaySettings, rayjob_uid: str) -> dict[str, Any]:
    """The JobSpec for the head pod; owned by the RayJob, so Kubernetes deletes it with the RayJob."""
    name = rayjob_name(job.id)
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob", "name": name, "uid": rayjob_uid}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{name}-spec",
            "namespace": settings.namespace,
            "labels": {"app.kubernetes.io/part-of": PART_OF, "searchr1.io/job": name},
            "ownerReferences": [owner],
        },
        "data": {"job.json": json.dumps(job.spec.model_dump(mode="json"), indent=2)},
    }


def status_of(rayjob: dict[str, Any]) -> LaunchStatus:
    """Map a RayJob's status onto our states (RUNNING until KubeRay reports an end)."""
    status = rayjob.get("status") or {}
    job_status = status.get("jobStatus", "")
    deployment = status.get("jobDeploymentStatus", "")
    message = status.get("message", "") or status.get("reason", "")
    if job_status == "SUCCEEDED":
        return LaunchStatus(JobState.SUCCEEDED)
    if deployment == "Retrying":  # an attempt failed and backoffLimit allows another: still the job's learner
        return LaunchStatus(JobState.RUNNING, f"RayJob retrying after {status.get('failed', 0)} failed attempt(s)")
    if job_status in ("FAILED", "STOPPED") or deployment in ("Failed", "ValidationFailed"):
        return LaunchStatus(JobState.FAILED, f"RayJob {job_status or deployment}: {message}".strip(": "))
    if deployment == "Complete":
        return LaunchStatus(JobState.FAILED, f"RayJob completed with job status {job_status or 'unknown'}")
    return LaunchStatus(JobState.RUNNING)


# RayJob deployment states before its Ray cluster runs the entrypoint (KubeRay v1).
NOT_STARTED = ("", "New", "Initializing", "Waiting")


def not_started_message(job: JobRecord, settings: KubeRaySettings, deployment: str, waited_s: float) -> str:
    """Why a learner is failed that has not started: what its Ray cluster asks the Kubernetes cluster for."""
    name, resources = rayjob_name(job.id), job.spec.resources
    return (
        f"the learner did not start within {waited_s:.0f} s: RayJob {name} is still {deployment or 'not deployed'}. "
        f"Its Ray cluster asks for {resources.learner_nodes} worker pod(s) of {settings.worker_cpu} CPU, "
        f"{settings.worker_memory} memory and {resources.learner_gpus_per_node} GPU(s) each (plus a head pod of "
        f"{settings.head_cpu} CPU, {settings.head_memory}); the cluster may not have them "
        f"(kubectl describe rayjob {name}; kubectl get pods -l ray.io/cluster)"
    )


class KubeRayLauncher:
    name = "kuberay"
    relaunches = False  # the RayJob's backoffLimit retries a failed learner; Ray Train's FailureConfig a rank
    capacity = None  # the Kubernetes cluster places learners; one that cannot be placed fails after start_timeout_s

    def __init__(self, settings: KubeRaySettings, api_client: k8s.ApiClient | None = None) -> None:
        self.settings = settings
        if api_client is None:
            try:
                k8s_config.load_incluster_config()
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()
            api_client = k8s.ApiClient()
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)

    async def start(self, job: JobRecord) -> dict[str, Any]:
        ns, timeout = self.settings.namespace, self.settings.request_timeout_s
        rayjob = build_rayjob(job, self.settings)
        created = await asyncio.to_thread(
            self.custom.create_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, rayjob, _request_timeout=timeout
        )
        configmap = build_spec_configmap(job, self.settings, created["metadata"]["uid"])
        await asyncio.to_thread(self.core.create_namespaced_config_map, ns, configmap, _request_timeout=timeout)
        return {"rayjob": rayjob["metadata"]["name"], "namespace": ns, "launched_at": time.time()}

    async def poll(self, job: JobRecord) -> LaunchStatus:
        name = job.handle.get("rayjob") or rayjob_name(job.id)
        try:
            rayjob = await asyncio.to_thread(
                self.custom.get_namespaced_custom_object,
                GROUP, VERSION, self.settings.namespace, PLURAL, name,
                _request_timeout=self.settings.request_timeout_s,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return LaunchStatus(JobState.FAILED, f"RayJob {name} no longer exists")
            raise
        status = status_of(rayjob)
        deployment = (rayjob.get("status") or {}).get("jobDeploymentStatus", "")
        waited_s = time.time() - float(job.handle.get("launched_at", time.time()))
        if status.state is JobState.RUNNING and deployment in NOT_STARTED and waited_s > self.settings.start_timeout_s:
            await self.cancel(job)  # its pending pods would hold on to what the cluster does have
            return LaunchStatus(JobState.FAILED, not_started_message(job, self.settings, deployment, waited_s))
        return status

    async def cancel(self, job: JobRecord) -> None:
        name = job.handle.get("rayjob") or rayjob_name(job.id)
        try:  # the spec ConfigMap and the Ray cluster go with it (owner references)
            await asyncio.to_thread(
                self.custom.delete_namespaced_custom_object,
                GROUP, VERSION, self.settings.namespace, PLURAL, name,
                _request_timeout=self.settings.request_timeout_s,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise
