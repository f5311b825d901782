"""The chart's choice of retrieval backend (retriever.searchBackend: local, rerank, serpapi, google), rendered by
Helm's engine with the helpers of test_chart: the retriever Deployment gets the settings RetrieverSettings reads
(they parse), web keys come from an existing Secret, web backends need no Qdrant, the schema is a strict enum,
and a missing Secret or search engine id fails the install with a sentence saying what to set."""

from __future__ import annotations

import os
from typing import Any

import helm_python
import pytest
from test_chart import (
    CHART,
    FULLNAME,
    KUBE_VERSIONS,
    chart,
    core_validator,
    documents,
    env_of,
    errors_of,
    one,
    render,
)

from retriever.settings import RetrieverSettings

WEB = {"existingSecret": "search-keys"}
BACKENDS: dict[str, dict[str, Any]] = {
    "local": {},
    "rerank": {"retriever": {"searchBackend": "rerank", "rerank": {"candidates": 50, "batchSize": 32}}},
    "serpapi": {"retriever": {"searchBackend": "serpapi", "web": WEB}},
    # A web backend needs no index: Qdrant off and no external one is a valid install.
    "google": {
        "retriever": {"searchBackend": "google", "web": WEB | {"googleCx": "017576662512468239146:omuauf_lfve"}},
        "qdrant": {"enabled": False},
    },
}


def retriever_env(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deployment = one(documents(render(values)), "Deployment", f"{FULLNAME}-retriever")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return env_of(container)


def load_settings(env: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> RetrieverSettings:
    """RetrieverSettings as the pod would build them (a Secret's value stands in as a fixed string)."""
    for name in os.environ:
        if name.startswith("SEARCHR1_"):
            monkeypatch.delenv(name)
    for name, entry in env.items():
        if name.startswith("SEARCHR1_"):
            assert name.removeprefix("SEARCHR1_").lower() in RetrieverSettings.model_fields, name
            monkeypatch.setenv(name, "from-a-secret" if "valueFrom" in entry else entry["value"])
    return RetrieverSettings.load()


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_the_retriever_gets_the_backend_and_its_settings(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = retriever_env(BACKENDS[backend])
    settings = load_settings(env, monkeypatch)
    assert settings.search_backend == backend
    assert ("SEARCHR1_RERANK_MODEL" in env) == (backend == "rerank")
    assert ("SEARCHR1_WEB_TIMEOUT_S" in env) == (backend in ("serpapi", "google"))
    assert ("SEARCHR1_QDRANT_URL" in env) == (backend in ("local", "rerank"))  # web backends use no index


def test_rerank_settings_reach_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(retriever_env(BACKENDS["rerank"]), monkeypatch)
    assert settings.rerank_model == "cross-encoder/ms-marco-MiniLM-L12-v2"
    assert (settings.rerank_candidates, settings.rerank_batch_size) == (50, 32)


def test_web_keys_come_from_the_existing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    serpapi = retriever_env(BACKENDS["serpapi"])
    assert serpapi["SEARCHR1_SERPAPI_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "search-keys", "key": "serpapi-api-key"}
    }
    assert "SEARCHR1_GOOGLE_API_KEY" not in serpapi
    google = retriever_env(BACKENDS["google"])
    assert google["SEARCHR1_GOOGLE_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "search-keys", "key": "google-api-key"}
    }
    assert google["SEARCHR1_GOOGLE_CX"]["value"] == "017576662512468239146:omuauf_lfve"
    settings = load_settings(google, monkeypatch)
    assert (settings.web_timeout_s, settings.web_retries, settings.web_rate_per_s) == (10.0, 3, 5.0)
    assert (settings.web_cache_ttl_s, settings.web_cache_entries) == (3600.0, 10_000)


def test_a_web_backend_without_qdrant_renders_no_qdrant() -> None:
    docs = documents(render(BACKENDS["google"]))
    assert not [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-qdrant")]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("backend", ["rerank", "serpapi", "google"])
def test_backends_render_valid_kubernetes_and_lint_clean(backend: str, kube_version: str) -> None:
    for doc in documents(render(BACKENDS[backend], kube_version=kube_version)):
        if doc["apiVersion"] in ("apps/v1", "v1"):
            assert not errors_of(core_validator(doc["kind"], doc["apiVersion"], kube_version), doc), doc["kind"]
    values = BACKENDS[backend] | {"prerequisites": {"checkCapabilities": False}}
    report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{kube_version}")
    assert report["errors"] == [] and report["messages"] == [], report


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"retriever": {"searchBackend": "bing"}}, "/retriever/searchBackend"),
        ({"retriever": {"rerank": {"candidates": 0}}}, "/retriever/rerank/candidates"),
        ({"retriever": {"web": {"apiKey": "sk-in-the-clear"}}}, "additional properties 'apiKey' not allowed"),
        ({"retriever": {"web": {"timeoutSeconds": 0}}}, "/retriever/web/timeoutSeconds"),
    ],
)
def test_schema_rejects_bad_backend_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart().validate_schema(values)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"retriever": {"searchBackend": "serpapi"}}, "searchBackend=serpapi needs retriever.web.existingSecret"),
        ({"retriever": {"searchBackend": "google", "web": WEB}}, "needs retriever.web.googleCx"),
    ],
)  # fmt: skip
def test_a_web_backend_without_its_key_or_engine_fails_clearly(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(values)
    assert message in str(caught.value)
