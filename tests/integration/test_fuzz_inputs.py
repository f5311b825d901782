"""Property tests: job submissions, evaluation requests and retriever requests built from arbitrary JSON
(non-finite and huge numbers, lone surrogates, wrong types, nesting) sent to the real services never get a 5xx,
and the job store stays readable whatever was accepted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from retriever_testkit import build_test_index, encoder
from support import ApiServer, ThreadServer

from retriever.app import create_app
from retriever.encoders import Bm25Encoder
from retriever.index import EdgeIndex
from retriever.search import Searcher
from retriever.settings import RetrieverSettings
from services.contracts import (
    DataConfig,
    DataSource,
    GRPOConfig,
    JobSpec,
    PPOConfig,
    ResourcesConfig,
    RewardConfig,
    RolloutConfig,
    ScheduleConfig,
)
from services.models import TINY_QWEN2

pytestmark = pytest.mark.slow

TEXT = st.text(st.characters(codec=None), max_size=12)  # any code point, lone surrogates included
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30, 10**4299]),
    st.floats(),  # NaN and the infinities included
    TEXT,
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=6)  # fmt: skip


def section(model: type) -> st.SearchStrategy[dict]:
    """Some of the model's fields (each an arbitrary JSON value) and sometimes a field it does not have."""
    fields = st.fixed_dictionaries({}, optional={name: JSON for name in model.model_fields})
    return st.one_of(fields, st.builds(lambda f, k, v: {**f, k: v}, fields, TEXT, JSON))


OVERRIDES = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(TEXT, JSON), "model": st.one_of(TEXT, JSON), "kind": st.sampled_from(["train", "eval", 1]),
        "algorithm": st.one_of(section(GRPOConfig), section(PPOConfig).map(lambda a: {**a, "name": "ppo"})),
        "rollout": section(RolloutConfig), "schedule": section(ScheduleConfig), "resources": section(ResourcesConfig),
        "reward": section(RewardConfig), "data": st.one_of(section(DataConfig), st.fixed_dictionaries(
            {"train": st.lists(section(DataSource), max_size=2)})),
    },
)  # fmt: skip
SUBMISSIONS = st.one_of(
    OVERRIDES.map(lambda o: {"preset": "paper-grpo", "overrides": o}),
    st.builds(lambda base, o: {**base, **o}, st.just(JobSpec.from_preset("paper-grpo").model_dump(mode="json")),
              OVERRIDES),
    JSON,
)  # fmt: skip


EVALUATIONS = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.one_of(st.just(TINY_QWEN2), JSON), "job_id": st.one_of(TEXT, JSON),
            "step": st.one_of(st.integers(), JSON), "limit": st.one_of(st.integers(), JSON),
            "datasets": st.one_of(st.lists(st.sampled_from(["nq", "bamboogle", "mine"]), max_size=3), JSON),
            "paths": st.one_of(st.lists(TEXT, max_size=3), JSON), "rollout": section(RolloutConfig), "name": JSON,
        },
    ),
    JSON,
)  # fmt: skip


def test_job_submissions_never_get_a_5xx_and_the_store_stays_readable(api: ApiServer) -> None:
    api.env["FAKE_LEARNER_EXIT"] = "3"  # learners of accepted jobs exit at once
    api.restart()
    statuses: set[int] = set()

    @given(body=SUBMISSIONS)
    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(body: object) -> None:
        response = api.client.post("/v1/jobs", content=json.dumps(body), headers={"Content-Type": "application/json"})
        statuses.add(response.status_code)
        assert response.status_code in (201, 422), (response.status_code, response.text[:500])
        assert len(response.content) < 20_000, "the answer does not echo the input at length"

    check()
    assert statuses == {201, 422}, "both accepted and refused specs were generated"

    @given(body=EVALUATIONS)
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check_evaluation(body: object) -> None:
        response = api.client.post(
            "/v1/evaluations", content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        assert response.status_code in (201, 404, 422), (response.status_code, response.text[:500])

    check_evaluation()
    listing = api.client.get("/v1/jobs", params={"limit": 500})
    assert listing.status_code == 200 and listing.json()["quarantined"] == 0
    for job in listing.json()["jobs"]:
        assert api.client.get(f"/v1/jobs/{job['id']}").status_code == 200
        JobSpec.parse(job["spec"])  # what was stored reads back as a valid spec
    assert api.client.get("/v1/evaluations").status_code == 200


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    index_dir: Path = build_test_index(tmp_path_factory, "fuzz-index")
    searcher = Searcher(EdgeIndex(index_dir), encoder(), Bm25Encoder())
    limits = {"max_queries": 16, "max_topk": 10, "max_query_chars": 64, "coalesce_wait_ms": 1.0}
    with ThreadServer(create_app(RetrieverSettings(index_dir=index_dir, **limits), searcher)) as running:
        yield running
    searcher.close()


REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "queries": st.one_of(st.lists(TEXT, max_size=20), JSON), "topk": st.one_of(st.integers(-2, 12), JSON),
        "mode": st.one_of(st.sampled_from(["dense", "sparse", "hybrid"]), JSON), "return_scores": JSON,
    },
)  # fmt: skip


def test_retriever_requests_never_get_a_5xx(retriever: ThreadServer) -> None:
    statuses: set[int] = set()
    with httpx.Client(base_url=retriever.url, timeout=60) as http:

        @given(path=st.sampled_from(["/retrieve", "/v1/search"]), body=st.one_of(REQUESTS, JSON))
        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(path: str, body: object) -> None:
            response = http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
            statuses.add(response.status_code)
            assert response.status_code in (200, 422), (response.status_code, response.text[:500])
            if response.status_code == 200:
                answered = response.json()["result" if path == "/retrieve" else "results"]
                assert len(answered) == len(body["queries"])
            else:
                assert len(response.content) < 20_000

        check()
    assert statuses == {200, 422}
