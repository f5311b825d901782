"""The Helm chart, validated offline: Helm's own engine renders it (helm-python-sdk) for the defaults, every
overlay in deploy/helm and a few edge shapes; `lint --strict` has no findings; core kinds are valid Kubernetes
1.30 and 1.33 (kubernetes-validate, strict); custom resources are valid against the CRD schemas in
../shared/schemas; the settings the chart passes are the ones the code reads; the schema and the prerequisite
checks reject bad values with a sentence saying what to do; every dashboard and alert uses metric names the code
defines; every pod is locked down.
"""

from __future__ import annotations

import base64
import copy
import functools
import gzip
import importlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml
from dashboards import DASHBOARDS, dashboard_queries, with_grafana_variables
from helm_python import _native
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from services.config import CONFIG_FILE_ENV

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "searchr1"
OVERLAY_DIR = ROOT / "deploy" / "helm"
DOCKER_DIR = ROOT / "deploy" / "docker"
SCHEMAS = ROOT.parent / "shared" / "schemas"
METRIC_SOURCES = [ROOT / package for package in ("services", "reward", "retriever", "rollout", "trainer")]

ALL_APIS = ["ray.io/v1", "keda.sh/v1alpha1", "monitoring.coreos.com/v1"]
KUBE_VERSIONS = ["1.30.0", "1.33.0"]
RELEASE, NAMESPACE = "demo", "ml"
FULLNAME = f"{RELEASE}-searchr1"

OVERLAYS = {path.stem: path for path in sorted(OVERLAY_DIR.glob("values-*.yaml"))}

# Shapes beyond the defaults and the overlays: every optional object on; external services; embedded index.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything-on": {
        "keda": {"enabled": True},
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        },
        "retriever": {"indexBuild": {"enabled": True, "limit": 1000}},
        "imagePullSecrets": [{"name": "registry"}],
        "image": {"digest": "sha256:" + "a" * 64},
        "networkPolicy": {"apiFrom": [{"namespaceSelector": {"matchLabels": {"team": "ml"}}}]},
        "platform": {"env": {"SEARCHR1_RECLAIM_IDLE_MS": "30000"}},
        "learner": {"env": {"SEARCHR1_MAX_DELIVERIES": "7"}},
    },
    "external-services": {
        "redis": {"enabled": False},
        "externalRedis": {"host": "redis.data.svc", "port": 6380, "db": 2, "tls": True, "existingSecret": "redis-auth"},
        "learner": {"envFromSecret": "learner-env"},
        "qdrant": {"enabled": False},
        "externalQdrant": {"url": "https://qdrant.example.com:6333", "existingSecret": "qdrant-auth"},
        "api": {"auth": {"existingSecret": "api-auth", "existingSecretKey": "token"}},
        "keda": {"enabled": True},
    },
    "embedded-index-local-launcher": {
        "api": {"launcher": "local"},
        "rollout": {"enabled": False},
        "retriever": {"backend": "embedded", "autoscaling": {"enabled": False}, "replicas": 1},
        "prerequisites": {"checkCapabilities": False},
    },
}
for _stem, _path in OVERLAYS.items():
    SCENARIOS[_stem] = yaml.safe_load(_path.read_text()) or {}

# Metric names the dashboards use that no code defines yet, with what must define them (the rollout tier, issue 5),
# under exactly these names (DESIGN.md's `searchr1_<tier>_<thing>_<unit>` rule). A panel using any other undefined
# name fails; these make their dashboard's test xfail, naming them, until defined.
PENDING_METRICS: dict[str, str] = {}
# Labels Prometheus or the operator attach to every series (besides the ones the code declares).
TARGET_LABELS = {"le", "instance", "job", "namespace", "pod", "container", "service", "endpoint"}


# ------------------------------------------------------------------------------------------------ rendering
@functools.cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render(
    values: dict[str, Any],
    *,
    api_versions: list[str] | None = None,
    kube_version: str | None = None,
    release: str = RELEASE,
) -> dict[str, str]:
    """Template path -> rendered text, like `helm template --api-versions ... --kube-version ...`.

    `Chart.render` has no api_versions argument; the bundled libhelm_c's render options do (the same field
    `helm template --api-versions` sets), so capability checks are exercised for real.
    """
    options: dict[str, Any] = {"name": release, "namespace": NAMESPACE}
    options["api_versions"] = ALL_APIS if api_versions is None else api_versions
    if kube_version:
        options["kube_version"] = f"v{kube_version}"
    rendered = _native.call_string("helm_render", chart()._raw(), json.dumps(values), json.dumps(options))
    return json.loads(rendered)


def documents(rendered: dict[str, str], hooks: bool = True) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            is_hook = "helm.sh/hook" in (doc.get("metadata", {}).get("annotations") or {})
            if hooks or not is_hook:
                docs.append(doc)
    return docs


@functools.cache
def scenario_docs(name: str, kube_version: str | None = None) -> tuple[dict[str, Any], ...]:
    return tuple(documents(render(SCENARIOS[name], kube_version=kube_version)))


def find(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod a manifest creates (RayJobs: the ones the API's launcher builds)."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    spec = doc.get("spec", {})
    if kind == "Pod":
        yield f"Pod {name}", spec
    elif kind in ("Deployment", "StatefulSet", "Job"):
        yield f"{kind} {name}", spec["template"]["spec"]
    elif kind in ("RayService", "RayJob"):
        cluster = spec["rayClusterConfig" if kind == "RayService" else "rayClusterSpec"]
        yield f"{kind} {name} head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{kind} {name} {group['groupName']}", group["template"]["spec"]
        if "submitterPodTemplate" in spec:
            yield f"{kind} {name} submitter", spec["submitterPodTemplate"]["spec"]


def launched_rayjob(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """The RayJob the API's KubeRay launcher builds from the chart's settings for a one-GPU job."""
    from services.api.kuberay import KubeRaySettings, build_rayjob
    from services.api.store import JobRecord
    from services.contracts import JobSpec, JobState

    config = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-api")["data"]["api.yaml"])
    job = JobRecord(
        id="tiny-abc123",
        spec=JobSpec.from_preset("paper-grpo", {"name": "tiny", "resources": {"learner_gpus_per_node": 1}}),
        state=JobState.STARTING,
        created_at=time.time(),
        updated_at=time.time(),
    )
    return build_rayjob(job, KubeRaySettings(**config["kuberay"]))


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


# ------------------------------------------------------------------------------------------------ lint and render
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", ["defaults", *OVERLAYS])
def test_lint_strict_has_no_findings(scenario: str, kube_version: str) -> None:
    # lint cannot be told the cluster's API versions: the capability check is what it skips.
    values = copy.deepcopy(SCENARIOS[scenario])
    values.setdefault("prerequisites", {})["checkCapabilities"] = False
    report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{kube_version}")
    assert report["errors"] == [], report
    assert report["messages"] == [], report


def test_every_overlay_is_a_scenario() -> None:
    assert set(OVERLAYS) == {"values-cpu-kind", "values-1xgpu", "values-8xh100"}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_renders_every_tier(scenario: str) -> None:
    docs = scenario_docs(scenario)
    values = chart().merge_values(SCENARIOS[scenario])
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {("Deployment", f"{FULLNAME}-api"), ("Deployment", f"{FULLNAME}-reward")}
    if values["retriever"]["enabled"]:
        expected.add(("Deployment", f"{FULLNAME}-retriever"))
    if values["rollout"]["enabled"]:
        expected.add(("RayService", f"{FULLNAME}-rollout"))
    if values["redis"]["enabled"]:
        expected.add(("StatefulSet", f"{FULLNAME}-redis"))
    if values["qdrant"]["enabled"] and values["retriever"]["backend"] == "qdrant":
        expected.add(("StatefulSet", f"{FULLNAME}-qdrant"))
    assert expected <= kinds, expected - kinds
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two manifests share a kind and name"
    for kind, name in names:
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), (kind, name)


# ------------------------------------------------------------------------------------------------ schemas
@functools.cache
def core_validator(kind: str, api_version: str, kube_version: str) -> jsonschema.protocols.Validator:
    """kubernetes-validate's strict schema for one kind, built once (its validate() re-reads them per call)."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{kube_version}-local-strict"
    schema = schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", kube_version)
    definitions = schema_contents(f"{folder}/_definitions.json", kube_version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


CRD_FILES = {
    ("ray.io/v1", "RayService"): "ray.io_v1_RayService.json.gz",
    ("ray.io/v1", "RayJob"): "ray.io_v1_RayJob.json.gz",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_ScaledObject.json.gz",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_ServiceMonitor.json.gz",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_PodMonitor.json.gz",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_PrometheusRule.json.gz",
}
# Custom resources without a schema in ../shared/schemas: checked by hand below.
UNSCHEMED = {("keda.sh/v1alpha1", "TriggerAuthentication")}

needs_crd_schemas = pytest.mark.skipif(
    not SCHEMAS.is_dir(), reason="../shared/schemas (the CRD schemas) is not beside the repository"
)


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads(gzip.decompress((SCHEMAS / CRD_FILES[(api_version, kind)]).read_bytes()))
    return jsonschema.Draft7Validator(schema)


def errors_of(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_core_kinds_are_valid_kubernetes(scenario: str, kube_version: str) -> None:
    assert kubernetes_validate.utils.all_versions()  # the package's schemas are there
    problems = []
    for doc in scenario_docs(scenario, kube_version):
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_FILES or key in UNSCHEMED:
            continue
        for error in errors_of(core_validator(doc["kind"], doc["apiVersion"], kube_version), doc):
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {error}")
    assert not problems, "\n".join(problems)


@needs_crd_schemas
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_custom_resources_match_their_crd_schemas(scenario: str) -> None:
    problems, seen = [], set()
    for doc in scenario_docs(scenario):
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_FILES:
            seen.add(doc["kind"])
            for error in errors_of(crd_validator(*key), doc):
                problems.append(f"{doc['kind']} {doc['metadata']['name']}: {error}")
        elif key in UNSCHEMED:
            spec = doc["spec"]["secretTargetRef"]
            assert spec and all({"parameter", "name", "key"} <= set(ref) for ref in spec), doc
        elif "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].endswith(".k8s.io/v1"):
            problems.append(f"{key} has no schema to check it against")
    assert not problems, "\n".join(problems)
    if scenario == "everything-on":
        assert seen >= {"RayService", "ScaledObject", "ServiceMonitor", "PodMonitor", "PrometheusRule"}


@needs_crd_schemas
@pytest.mark.parametrize("scenario", ["defaults", *OVERLAYS])
def test_rayjob_the_api_builds_from_the_chart_settings_is_valid(scenario: str, tmp_path: Path) -> None:
    """The API's launcher fills the RayJob template from the chart's ConfigMap: that RayJob must be valid too."""
    manifest = launched_rayjob(scenario_docs(scenario))
    assert not errors_of(crd_validator("ray.io/v1", "RayJob"), manifest)
    pod = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{FULLNAME}-learner"
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": f"{FULLNAME}-learner-env"}}]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": f"{FULLNAME}-data"}} in pod["volumes"]


# ------------------------------------------------------------------------------------------------ settings
def settings_class(command: list[str]) -> type | None:
    """The settings class of the process a container runs (`python -m <module>`)."""
    module = command[2] if command[:2] == ["python", "-m"] else None
    if module == "services.api.app":
        from services.api.app import ApiSettings

        return ApiSettings
    if module == "reward.worker":
        from reward.worker import RewardSettings

        return RewardSettings
    if module in ("retriever.app", "retriever.build"):
        from retriever.settings import RetrieverSettings

        return RetrieverSettings
    return None


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_containers_get_settings_their_process_reads(
    scenario: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every SEARCHR1_* variable the chart sets names a real setting, and the values parse (Settings.load)."""
    docs = scenario_docs(scenario)
    checked = set()
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            cls = settings_class(container.get("command", []))
            assert cls is not None, f"{doc['metadata']['name']}: no settings class known for {container['command']}"
            for name in os.environ:
                if name.startswith("SEARCHR1_"):
                    monkeypatch.delenv(name)
            for name, entry in env_of(container).items():
                if not name.startswith("SEARCHR1_"):
                    continue
                field = name.removeprefix("SEARCHR1_").lower().split("__")[0]
                assert name == CONFIG_FILE_ENV or field in cls.model_fields, (
                    f"{doc['metadata']['name']}: {name} is not a {cls.__name__} setting"
                )
                if "valueFrom" in entry:
                    value = "from-a-secret"
                elif name == CONFIG_FILE_ENV:
                    configmap = one(docs, "ConfigMap", f"{FULLNAME}-api")
                    path = tmp_path / "api.yaml"
                    path.write_text(configmap["data"]["api.yaml"])
                    value = str(path)
                else:
                    value = entry["value"].replace("$(REDIS_PASSWORD)", "pw")
                monkeypatch.setenv(name, value)
            settings = cls.load()
            if "SEARCHR1_REDIS_URL" in env_of(container):
                assert settings.redis_url.startswith(("redis://", "rediss://"))
            checked.add(cls.__name__)
    assert "ApiSettings" in checked and "RewardSettings" in checked


def check_env_against(cls: type, env: dict[str, str], where: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in os.environ:
        if name.startswith("SEARCHR1_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("SEARCHR1_"):
            field = name.removeprefix("SEARCHR1_").lower().split("__")[0]
            assert field in cls.model_fields, f"{where}: {name} is not a {cls.__name__} setting"
            monkeypatch.setenv(name, value.replace("$(REDIS_PASSWORD)", "pw"))
    return cls.load()


@pytest.mark.parametrize("scenario", ["defaults", *OVERLAYS])
def test_rollout_pods_get_settings_the_serve_app_reads(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from rollout.worker import RolloutSettings

    values = chart().merge_values(SCENARIOS[scenario])
    rayservice = one(scenario_docs(scenario), "RayService", f"{FULLNAME}-rollout")
    cluster = rayservice["spec"]["rayClusterConfig"]
    for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        container = spec["template"]["spec"]["containers"][0]
        env = {k: e.get("value", "from-a-secret") for k, e in env_of(container).items()}
        settings = check_env_against(RolloutSettings, env, f"RayService {container['name']}", monkeypatch)
        assert settings.model == values["rollout"]["model"]
        assert settings.replica_gpus == values["rollout"]["replica"]["numGpus"]
        assert settings.retriever_url == f"http://{FULLNAME}-retriever.{NAMESPACE}.svc:8000"
    app = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
    assert [d["name"] for d in app["deployments"]] == [values["rollout"]["deploymentName"]]
    module, attribute = app["import_path"].split(":")
    target = getattr(importlib.import_module(module), attribute, None)
    if target is None:
        # Serve passes a builder its `args` dict as is (a string annotation is not a pydantic class to it, and
        # model_validate would skip the env anyway), so rollout/serve.py needs an entry point of its own.
        pytest.xfail(
            f"{module} has no {attribute!r} for RayService to import; add "
            f"`def {attribute}(args: dict[str, str]) -> Application: return build_app(RolloutSettings.load(**args))`"
        )
    assert callable(target) or type(target).__name__ == "Application", app["import_path"]


@pytest.mark.parametrize("scenario", ["defaults", *OVERLAYS])
def test_rollout_scales_on_its_queue_with_the_policy_the_code_builds(scenario: str) -> None:
    """The RayService's Serve config is one Serve accepts, and its autoscaling is BacklogPolicy with the chart's
    target, bounds and delays: a config without the policy would get Serve's own, which counts HTTP requests and
    never sees the queue the work arrives on."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    from rollout.serve import autoscaling_config
    from rollout.worker import RolloutSettings

    values = chart().merge_values(SCENARIOS[scenario])["rollout"]
    rayservice = one(scenario_docs(scenario), "RayService", f"{FULLNAME}-rollout")
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    (deployment,) = serve_config.applications[0].deployments
    scaling = values["autoscaling"]
    if not scaling["enabled"]:
        assert deployment.num_replicas == values["replicas"]
        return
    assert deployment.num_replicas == "auto"
    rendered = AutoscalingConfig(**deployment.autoscaling_config)
    code = autoscaling_config(
        RolloutSettings(
            replicas=scaling["minReplicas"],
            max_replicas=scaling["maxReplicas"],
            target_backlog_per_replica=scaling["targetBacklogPerReplica"],
        )
    )
    assert code is not None and rendered.policy == code.policy
    assert (rendered.min_replicas, rendered.max_replicas, rendered.initial_replicas) == (
        scaling["minReplicas"], scaling["maxReplicas"], scaling["initialReplicas"]
    )  # fmt: skip
    assert (rendered.upscale_delay_s, rendered.downscale_delay_s) == (
        scaling["upscaleDelaySeconds"], scaling["downscaleDelaySeconds"]
    )  # fmt: skip


@pytest.mark.parametrize("scenario", ["defaults", *OVERLAYS])
def test_learner_env_names_learner_settings(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.train import LearnerSettings

    config = yaml.safe_load(one(scenario_docs(scenario), "ConfigMap", f"{FULLNAME}-api")["data"]["api.yaml"])
    env = config["kuberay"]["env"]
    settings = check_env_against(LearnerSettings, env, "learner RayJob", monkeypatch)
    assert str(settings.data_dir) == "/data"
    assert config["kuberay"]["entrypoint"] == "trainer.train"


def test_api_settings_select_the_kuberay_launcher_and_its_template() -> None:
    docs = scenario_docs("defaults")
    config = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-api")["data"]["api.yaml"])
    assert config["launcher"] == "kuberay"
    assert config["kuberay"]["namespace"] == NAMESPACE
    assert config["kuberay"]["image"].startswith("searchr1/searchr1-gpu:")
    assert config["kuberay"]["env"]["SEARCHR1_DATA_DIR"] == "/data"
    assert config["kuberay"]["data_pvc"] == f"{FULLNAME}-data"
    assert config["shared_data_dir"] == "/data", "evaluations name eval sets on the learners' shared volume"
    api = one(docs, "Deployment", f"{FULLNAME}-api")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(api)
    assert env["SEARCHR1_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{FULLNAME}-api-token",
        "key": "api-token",
    }
    assert env["SEARCHR1_REDIS_URL"]["value"] == f"redis://:$(REDIS_PASSWORD)@{FULLNAME}-redis.{NAMESPACE}.svc:6379/0"
    # Kubernetes expands $(REDIS_PASSWORD) only from variables defined before it.
    names = [entry["name"] for entry in api["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("SEARCHR1_REDIS_URL")


def test_learner_secret_holds_the_same_redis_password() -> None:
    docs = scenario_docs("defaults")
    password = base64.b64decode(one(docs, "Secret", f"{FULLNAME}-redis")["data"]["redis-password"]).decode()
    url = base64.b64decode(one(docs, "Secret", f"{FULLNAME}-learner-env")["data"]["SEARCHR1_REDIS_URL"]).decode()
    assert len(password) == 32
    assert url == f"redis://:{password}@{FULLNAME}-redis.{NAMESPACE}.svc:6379/0"


def test_external_services_come_from_existing_secrets() -> None:
    docs = scenario_docs("external-services")
    assert not find(docs, "Secret"), "with existing Secrets named, the chart generates none"
    assert not find(docs, "StatefulSet")
    api = env_of(one(docs, "Deployment", f"{FULLNAME}-api")["spec"]["template"]["spec"]["containers"][0])
    assert api["SEARCHR1_REDIS_URL"]["value"] == "rediss://:$(REDIS_PASSWORD)@redis.data.svc:6380/2"
    assert api["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "redis-password"}
    assert api["SEARCHR1_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "api-auth", "key": "token"}
    retriever = env_of(one(docs, "Deployment", f"{FULLNAME}-retriever")["spec"]["template"]["spec"]["containers"][0])
    assert retriever["SEARCHR1_QDRANT_URL"]["value"] == "https://qdrant.example.com:6333"
    assert retriever["SEARCHR1_QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "qdrant-auth"
    trigger = one(docs, "ScaledObject", f"{FULLNAME}-reward")["spec"]["triggers"][0]["metadata"]
    assert trigger["address"] == "redis.data.svc:6380" and trigger["databaseIndex"] == "2"
    assert trigger["enableTLS"] == "true"
    config = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-api")["data"]["api.yaml"])
    assert config["kuberay"]["env_from_secret"] == "learner-env"


SECRET_NAME = re.compile(r"PASSWORD|TOKEN|API_KEY|SECRET", re.IGNORECASE)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_secret_in_the_clear(scenario: str) -> None:
    docs = scenario_docs(scenario)
    for doc in docs:
        for where, spec in pod_specs(doc):
            for container in spec["containers"]:
                for name, entry in env_of(container).items():
                    if SECRET_NAME.search(name):
                        assert "valueFrom" in entry, f"{where}: {name} must come from a Secret"
    for configmap in find(docs, "ConfigMap"):
        text = json.dumps(configmap["data"])
        for secret in find(docs, "Secret"):
            for value in secret.get("data", {}).values():
                plain = base64.b64decode(value).decode()
                assert plain not in text, f"ConfigMap {configmap['metadata']['name']} holds a secret value"


# ------------------------------------------------------------------------------------------------ security
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_pod_is_locked_down(scenario: str) -> None:
    problems = []
    docs = scenario_docs(scenario)
    api_config = find(docs, "ConfigMap", f"{FULLNAME}-api")
    learners = [launched_rayjob(docs)] if api_config and "kuberay:" in api_config[0]["data"]["api.yaml"] else []
    for doc in [*docs, *learners]:
        for where, spec in pod_specs(doc):
            pod_security = spec.get("securityContext", {})
            if pod_security.get("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: no RuntimeDefault seccomp profile")
            if spec.get("automountServiceAccountToken") is not False and not doc["metadata"]["name"].endswith("-api"):
                problems.append(f"{where}: mounts a service account token it does not need")
            for container in spec["containers"]:
                security = container.get("securityContext", {})
                label = f"{where} container {container['name']}"
                if security.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{label}: allowPrivilegeEscalation is not false")
                if "ALL" not in security.get("capabilities", {}).get("drop", []):
                    problems.append(f"{label}: capabilities are not all dropped")
                if security.get("privileged"):
                    problems.append(f"{label}: privileged")
                # Ray included: its session dirs and caches are emptyDirs.
                if security.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{label}: root filesystem is writable")
                resources = container.get("resources", {})
                if not resources.get("requests") or not resources.get("limits"):
                    problems.append(f"{label}: no resource requests and limits")
                if ":latest" in container["image"] or not re.search(
                    r"(:[\w.-]+|@sha256:[a-f0-9]{64})$", container["image"]
                ):
                    problems.append(f"{label}: image {container['image']} is not pinned")
                long_running = doc["kind"] in ("Deployment", "StatefulSet")
                if long_running and not (container.get("livenessProbe") and container.get("readinessProbe")):
                    problems.append(f"{label}: no liveness and readiness probes")
    assert not problems, "\n".join(problems)


def test_gpu_workers_get_gpus_shm_and_nccl_settings() -> None:
    docs = scenario_docs("values-8xh100")
    rayservice = one(docs, "RayService", f"{FULLNAME}-rollout")
    worker = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    container = worker["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["image"].startswith("searchr1/searchr1-gpu:")
    shm = next(v for v in worker["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    env = env_of(container)
    assert env["NCCL_SOCKET_IFNAME"]["value"] == "eth0"
    assert env["SEARCHR1_REPLICA_GPUS"]["value"] == "1"
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    app = serve["applications"][0]
    assert app["import_path"] == "rollout.serve:app"
    (deployment,) = app["deployments"]
    assert deployment["num_replicas"] == "auto"
    assert deployment["autoscaling_config"]["min_replicas"] == 8
    # CPU shape: no GPU asked for anywhere.
    kind = one(scenario_docs("values-cpu-kind"), "RayService", f"{FULLNAME}-rollout")
    kind_worker = kind["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in kind_worker["resources"]["limits"]
    assert kind_worker["image"].startswith("searchr1/searchr1-cpu:")


def test_api_rbac_is_limited_to_what_the_kuberay_launcher_does() -> None:
    docs = scenario_docs("defaults")
    role = one(docs, "Role", f"{FULLNAME}-api")
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    ]
    binding = one(docs, "RoleBinding", f"{FULLNAME}-api")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULLNAME}-api", "namespace": NAMESPACE}]
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")


def test_redis_keeps_every_write() -> None:
    docs = scenario_docs("defaults")
    conf = one(docs, "ConfigMap", f"{FULLNAME}-redis")["data"]["redis.conf"]
    for line in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"):
        assert line in conf.splitlines()
    redis = one(docs, "StatefulSet", f"{FULLNAME}-redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_keda_scales_reward_workers_on_their_stream_lag() -> None:
    docs = scenario_docs("everything-on")
    scaled = one(docs, "ScaledObject", f"{FULLNAME}-reward")
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"{FULLNAME}-reward"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == "searchr1:reward" and trigger["metadata"]["consumerGroup"] == "reward"
    assert int(trigger["metadata"]["lagCount"]) > 0
    assert (
        trigger["authenticationRef"]["name"]
        == one(docs, "TriggerAuthentication", f"{FULLNAME}-redis")["metadata"]["name"]
    )
    assert "replicas" not in one(docs, "Deployment", f"{FULLNAME}-reward")["spec"], "KEDA owns the replica count"
    assert "replicas" in one(scenario_docs("defaults"), "Deployment", f"{FULLNAME}-reward")["spec"]


def test_network_policies_cover_every_tier() -> None:
    docs = scenario_docs("everything-on")
    policies = {p["metadata"]["name"]: p for p in find(docs, "NetworkPolicy")}
    components = {"api", "reward", "redis", "retriever", "qdrant", "rollout", "learners"}
    components |= {"default-deny", "egress", "kube-api"}
    assert set(policies) == {f"{FULLNAME}-{c}" for c in components}
    redis_from = policies[f"{FULLNAME}-redis"]["spec"]["ingress"][0]["from"]
    allowed = next(p["podSelector"]["matchExpressions"][0]["values"] for p in redis_from if "podSelector" in p)
    assert set(allowed) == {"api", "reward", "rollout"}, "only the tiers that use Redis reach it"
    qdrant_from = policies[f"{FULLNAME}-qdrant"]["spec"]["ingress"][0]["from"]
    assert qdrant_from[0]["podSelector"]["matchExpressions"][0]["values"] == ["retriever", "index-build"]


def test_helm_test_hooks_check_api_health_and_a_retrieve_query() -> None:
    tests = [d for d in scenario_docs("defaults") if d["kind"] == "Pod"]
    assert {t["metadata"]["annotations"]["helm.sh/hook"] for t in tests} == {"test"}
    scripts = {t["metadata"]["name"]: " ".join(t["spec"]["containers"][0]["command"]) for t in tests}
    assert "/healthz" in scripts[f"{FULLNAME}-test-api"] and "/v1/jobs" in scripts[f"{FULLNAME}-test-api"]
    assert "/retrieve" in scripts[f"{FULLNAME}-test-retrieve"]
    for script in scripts.values():
        compile(script.split(" -c ", 1)[1], "helm-test", "exec")  # the embedded Python is valid


# ------------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api": {"port": "http"}}, "at '/api/port': got string, want integer"),
        ({"api": {"launcher": "slurm"}}, "/api/launcher"),
        ({"typo": True}, "additional properties 'typo' not allowed"),
        ({"redis": {"auth": {"password": "hunter2"}}}, "at '/redis/auth': additional properties 'password'"),
        ({"rollout": {"autoscaling": {"minReplicas": 0}}}, "/rollout/autoscaling/minReplicas"),
        ({"containerSecurityContext": {"allowPrivilegeEscalation": True, "capabilities": {"drop": ["ALL"]}}},
         "/containerSecurityContext/allowPrivilegeEscalation"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
        ({"platform": {"env": {"REDIS_PASSWORD": "hunter2"}}}, "'REDIS_PASSWORD' does not match pattern"),
        ({"monitoring": {"prometheusRule": {"growingFor": "15 minutes"}}}, "/monitoring/prometheusRule/growingFor"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"api": {"replicas": 3}}, "/api/replicas"),
    ],
)  # fmt: skip
def test_schema_rejects_bad_values_with_the_path(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart().validate_schema(values)
    assert message in str(caught.value)
    with pytest.raises(helm_python.HelmError):
        render(values)


@pytest.mark.parametrize(
    ("values", "api_versions", "message"),
    [
        ({}, [], "needs the KubeRay operator (API ray.io/v1"),
        ({"keda": {"enabled": True}}, ["ray.io/v1"], "keda.enabled=true needs the KEDA operator"),
        ({"monitoring": {"podMonitor": {"enabled": True}}}, ["ray.io/v1"], "need the Prometheus Operator CRDs"),
        ({"redis": {"enabled": False}}, None, "redis.enabled=false needs externalRedis.host"),
        ({"externalRedis": {"host": "r"}}, None, "choose one Redis"),
        ({"redis": {"auth": {"existingSecret": "mine"}}}, None, "set learner.envFromSecret"),
        ({"qdrant": {"enabled": False}}, None, "needs externalQdrant.url"),
        ({"storage": {"create": False}, "retriever": {"backend": "embedded"}}, None, "set storage.create=true"),
        ({"rollout": {"workers": {"gpus": 0}}}, None, "no Ray worker would have a GPU"),
        ({"rollout": {"replica": {"numGpus": 2}}}, None, "an engine replica must fit on one worker"),
        ({"rollout": {"autoscaling": {"minReplicas": 9}}}, None, "rollout.autoscaling.minReplicas (9) is above"),
        ({"rollout": {"workers": {"minReplicas": 5}}}, None, "rollout.workers.minReplicas (5) is above"),
    ],
)
def test_prerequisite_checks_fail_with_a_clear_message(
    values: dict[str, Any], api_versions: list[str] | None, message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(values, api_versions=api_versions)
    assert message in str(caught.value)


def test_capability_check_can_be_skipped_for_offline_rendering() -> None:
    rendered = chart().render({"prerequisites": {"checkCapabilities": False}}, name=RELEASE, namespace=NAMESPACE)
    assert any(d["kind"] == "RayService" for d in documents(rendered))


# ------------------------------------------------------------------------------------------------ metrics
@functools.cache
def defined_metrics() -> frozenset[str]:
    """Every `searchr1_*` string literal in the Python sources: the metric names the code defines."""
    names = set()
    for source in METRIC_SOURCES:
        for path in source.rglob("*.py"):
            names.update(re.findall(r"""["'](searchr1_[a-z0-9_]+)["']""", path.read_text()))
    return frozenset(names)


def base_metric(series: str, known: frozenset[str] | set[str]) -> str:
    """The metric a series belongs to: histogram and counter series carry suffixes the definition does not."""
    if series in known:
        return series
    for suffix in ("_bucket", "_sum", "_count", "_created", "_total"):
        if series.endswith(suffix) and series.removesuffix(suffix) in known:
            return series.removesuffix(suffix)
    return series


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(searchr1_[a-z0-9_]+)", expr))


@functools.cache
def declared_labels() -> dict[str, frozenset[str]]:
    """metric -> the label names its definition declares (`counter("name", "doc", ["a", "b"])`)."""
    pattern = re.compile(
        r"""\b(?:counter|gauge|histogram)\(\s*["'](searchr1_[a-z0-9_]+)["']\s*,\s*(?:"[^"]*"|'[^']*')\s*"""
        r"""(?:,\s*(?:labels\s*=\s*)?[\[(]([^\])]*)[\])])?"""
    )
    labels = {}
    for source in METRIC_SOURCES:
        for path in source.rglob("*.py"):
            for name, label_list in pattern.findall(path.read_text()):
                labels[name] = frozenset(re.findall(r"""["']([a-zA-Z_][a-zA-Z0-9_]*)["']""", label_list or ""))
    return labels


def labels_used(expr: str) -> set[str]:
    used = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        used.update(label.strip() for label in group.split(",") if label.strip())
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        used.update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return used


def check_metric_use(where: str, exprs: list[tuple[str, str]]) -> list[str]:
    """Fail on metric or label names nobody defines; report the pending names a tier being written must define."""
    defined, declared = defined_metrics(), declared_labels()
    pending = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: {title!r} queries no searchr1 metric: {expr}"
        metrics = set()
        for series in names:
            metric = base_metric(series, defined | set(PENDING_METRICS))
            if metric in defined:
                metrics.add(metric)
                continue
            assert metric in PENDING_METRICS, f"{where}: {title!r} uses {series}, which no code defines"
            pending.add(metric)
        if metrics and not pending & metric_names(expr):
            known = set().union(*(declared.get(m, frozenset()) for m in metrics)) | TARGET_LABELS
            unknown = labels_used(expr) - known
            assert not unknown, f"{where}: {title!r} uses labels {sorted(unknown)} that {sorted(metrics)} do not have"
    return sorted(pending)


def test_dashboards_cover_the_four_views() -> None:
    assert [p.stem for p in DASHBOARDS] == ["pipeline", "retrieval", "rollout", "training"]
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        assert board["uid"] == f"searchr1-{path.stem}"
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{path.name}: {panel['title']} is wider than the grid"
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_queries_use_metrics_the_code_defines(dashboard: Path) -> None:
    pending = check_metric_use(dashboard.name, dashboard_queries(dashboard))
    if pending:
        pytest.xfail(f"not defined by code yet: {', '.join(f'{m} ({PENDING_METRICS[m]})' for m in pending)}")


def prometheus_rule() -> dict[str, Any]:
    return one(scenario_docs("everything-on"), "PrometheusRule", FULLNAME)


def test_alerts_cover_lag_pending_failures_latency_and_stalls() -> None:
    alerts = {r["alert"]: r for g in prometheus_rule()["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) >= {
        "SearchR1StreamLagHigh",
        "SearchR1StreamLagGrowing",
        "SearchR1StreamPendingGrowing",
        "SearchR1JobFailed",
        "SearchR1RetrieverSlow",
        "SearchR1LearnerStalled",
    }
    for name, rule in alerts.items():
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert 'state="FAILED"' in alerts["SearchR1JobFailed"]["expr"]


def test_alert_expressions_use_metrics_the_code_defines() -> None:
    rules = [(r["alert"], r["expr"]) for g in prometheus_rule()["spec"]["groups"] for r in g["rules"]]
    assert check_metric_use("PrometheusRule", rules) == []


def test_dashboards_ship_as_grafana_configmaps() -> None:
    configmaps = [c for c in find(scenario_docs("defaults"), "ConfigMap") if "-dashboard-" in c["metadata"]["name"]]
    assert len(configmaps) == len(DASHBOARDS)
    for configmap in configmaps:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = configmap["data"].items()
        source = CHART / "dashboards" / key.removeprefix("searchr1-")
        assert json.loads(text) == json.loads(source.read_text())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (apt: prometheus) is not installed")
def test_promql_of_rules_and_every_panel_parses(tmp_path: Path) -> None:
    """`promtool check rules` on the PrometheusRule, and on every panel query as a recording rule."""
    grafana_vars = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": ".*"}
    panel_rules = []
    for path in DASHBOARDS:
        for i, (_, expr) in enumerate(dashboard_queries(path)):
            panel_rules.append({"record": f"panel:{path.stem}:{i}", "expr": with_grafana_variables(expr, grafana_vars)})
    files = {
        "alerts.yaml": {"groups": prometheus_rule()["spec"]["groups"]},
        "panels.yaml": {"groups": [{"name": "panels", "rules": panel_rules}]},
    }
    for name, content in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(content))
        result = subprocess.run(
            ["promtool", "check", "rules", str(tmp_path / name)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_pending_metrics_are_still_pending() -> None:
    """Once a tier defines a pending name, the list above must lose it: the dashboards' check then covers it."""
    done = sorted(set(PENDING_METRICS) & defined_metrics())
    assert not done, f"now defined by code, drop from PENDING_METRICS: {done}"


def test_the_install_notes_export_the_variables_the_cli_reads() -> None:
    """What NOTES.txt tells a person to export is what `searchr1 jobs ...` (services/api/client.py) reads."""
    [notes] = [text for path, text in render({}).items() if path.endswith("NOTES.txt")]
    exported = set(re.findall(r"export (SEARCHR1_[A-Z_]+)=", notes))
    assert exported == {"SEARCHR1_API_URL", "SEARCHR1_API_TOKEN"}
    client = (ROOT / "services" / "api" / "client.py").read_text()
    assert all(f'os.environ.get("{name}")' in client for name in exported)
    assert set(re.findall(r"\$(SEARCHR1_[A-Z_]+)", notes)) == exported, "every variable used is one exported"


# ------------------------------------------------------------------------------------------------ docs and images
def _posted_bodies(guide: str, route: str) -> list[dict]:
    """The JSON bodies of the guide's curl commands that POST to `route`."""
    pattern = r"-X POST \S+" + re.escape(route) + r"\s(?:(?!curl ).)*?-d '(\{.*?\})'"
    return [json.loads(body) for body in re.findall(pattern, guide, re.DOTALL)]


def test_requests_in_the_install_guide_are_valid() -> None:
    from services.api.evaluations import EvaluationRequest
    from services.contracts import JobSpec

    guide = (OVERLAY_DIR / "README.md").read_text()
    jobs, evaluations = _posted_bodies(guide, "/v1/jobs"), _posted_bodies(guide, "/v1/evaluations")
    assert len(jobs) >= 2 and len(evaluations) >= 1
    assert len(jobs) + len(evaluations) == len(re.findall(r"-d '\{", guide)), "a curl body posts to an unchecked route"
    for body in jobs:
        assert JobSpec.from_preset(body["preset"], body.get("overrides")).name
    for body in evaluations:
        assert EvaluationRequest.parse(body).datasets


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_are_pinned_and_non_root(dockerfile: str) -> None:
    text = (DOCKER_DIR / dockerfile).read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.MULTILINE))
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        for base in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    ]
    assert bases, "no FROM"
    for base in bases:
        if base in {"build"}:  # an earlier stage
            continue
        assert re.search(r":[\w.-]*\d[\w.-]*(@sha256:[a-f0-9]{64})?$", base) and ":latest" not in base, base
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    assert users[-1].split(":")[0] == "1000", "the chart's podSecurityContext runs uid 1000"
    for line in re.findall(r"pip install[^\n]*(?:\\\n[^\n]*)*", text):
        assert "-c " in line or "--constraint" in line or "==" in line, f"unpinned pip install: {line}"
    assert (DOCKER_DIR / f"{dockerfile}.dockerignore").exists()


def test_network_policies_deny_by_default_and_open_no_door_to_every_pod() -> None:
    docs = scenario_docs("everything-on")
    policies = {p["metadata"]["name"]: p["spec"] for p in find(docs, "NetworkPolicy")}
    deny = policies[f"{FULLNAME}-default-deny"]
    everything = {"matchLabels": {"app.kubernetes.io/part-of": "searchr1"}}
    assert deny == {"podSelector": everything, "policyTypes": ["Ingress", "Egress"]}, "no rules: nothing allowed"
    rayjob = launched_rayjob(docs)
    for name, spec in policies.items():
        for rule in spec.get("ingress", []) + spec.get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                assert peer.get("podSelector") != {} or "namespaceSelector" in peer, f"{name}: a peer of every pod"
    # Ray's Jobs API (8265) on learner clusters has no authentication: only the RayJob's submitter reaches it.
    [jobs_api] = [rule for rule in policies[f"{FULLNAME}-learners"]["ingress"]
                  if {"port": 8265} in rule.get("ports", [])]  # fmt: skip
    submitter = rayjob["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert jobs_api["from"] == [{"podSelector": {"matchLabels": submitter}}]
    assert submitter["searchr1.io/role"] == "rayjob-submitter"
    egress = policies[f"{FULLNAME}-egress"]["egress"]
    assert egress[0]["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert egress[1]["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "searchr1"}}}]
    [outside] = egress[2]["to"]
    assert "169.254.0.0/16" in outside["ipBlock"]["except"], "no pod reaches the cloud metadata endpoint"
    kube_api = policies[f"{FULLNAME}-kube-api"]
    assert kube_api["podSelector"]["matchExpressions"][0]["values"] == ["api", "rollout"]
    offline = find(documents(render({"networkPolicy": {"egressTo": []}})), "NetworkPolicy", f"{FULLNAME}-egress")
    assert len(offline[0]["spec"]["egress"]) == 2, "egressTo: [] leaves DNS and the release's own pods"
    external = one(scenario_docs("external-services"), "NetworkPolicy", f"{FULLNAME}-egress")["spec"]["egress"]
    assert {"ports": [{"port": 6380}]} in external, "pods reach the external Redis on its port"
