"""The rollout tier as a real Ray Serve application (HF engine on the tiny model, so it starts in seconds):
the HTTP API answers, and the replica consumes the rollout queue into trajectories."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from support import fake_retriever, wait_until

from rollout.serve import build_app
from rollout.worker import RolloutSettings
from searchr1.redis_server import free_port
from services.config import Settings
from services.contracts import EpisodeConfig, RolloutRequest, Trajectory
from services.streams import Streams, connect

DOCS = [("1", '"Paris"\nParis is the capital of France.')]


@pytest.fixture
def serve_app(settings: Settings) -> Iterator[dict[str, str]]:
    import ray
    from ray import serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    port, metrics_port = free_port(), free_port()
    with fake_retriever(DOCS) as retriever:
        rollout_settings = RolloutSettings(
            **{**settings.model_dump(), "metrics_port": metrics_port}, model="tiny-random-qwen2", engine="hf",
            max_model_len=512,
            retriever_url=retriever["url"], replica_cpus=0.5, concurrency=4,
        )  # fmt: skip
        ray.init(
            address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False
        )
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(rollout_settings), name="rollout", route_prefix="/")
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: _ok(url + "/readyz"), 120, "the Serve replica to be ready", interval_s=0.5)
            yield {"url": url, "metrics": f"http://127.0.0.1:{metrics_port}/metrics/"}
        finally:
            serve.shutdown()
            ray.shutdown()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_app_answers_http_and_consumes_the_queue(serve_app: dict[str, str], settings: Settings) -> None:
    url = serve_app["url"]
    generated = httpx.post(url + "/v1/generate", json={"prompt": "hello", "max_tokens": 8}, timeout=60)
    assert generated.status_code == 200 and generated.json()["policy_version"] == 0
    assert len(generated.json()["token_ids"]) <= 8
    # The episode the query asks for, which must fit the engine (max_model_len 512 here; the default is 4096).
    episode = {"max_turns": 1, "max_context_tokens": 512, "max_prompt_tokens": 256, "max_tokens_per_turn": 128,
               "max_obs_tokens": 128}  # fmt: skip
    agent = httpx.post(url + "/v1/agent", json={"question": "capital of France", "episode": episode}, timeout=120)
    assert agent.status_code == 200 and 1 <= agent.json()["turns"] <= 2
    too_long = httpx.post(url + "/v1/agent", json={"question": "capital of France"}, timeout=10)
    assert too_long.status_code == 422 and "max_model_len (512)" in too_long.text
    assert httpx.post(url + "/v1/agent", json={"question": ""}, timeout=10).status_code == 422

    async def roundtrip() -> list[Trajectory]:
        streams = Streams(connect(settings), settings)
        await streams.ensure_group(streams.reward, "reward")
        request = RolloutRequest(
            job_id="serve-job", prompt_uid="q:1", prompt_ids=np.arange(5, 25), n_samples=2, golden_answers=["Paris"],
            episode=EpisodeConfig(max_turns=1, max_context_tokens=256, max_prompt_tokens=240, max_tokens_per_turn=16),
        )  # fmt: skip
        await streams.publish(streams.rollout, request)
        found: list[Trajectory] = []
        for _ in range(300):
            entries = await streams.read(streams.reward, "reward", "test", Trajectory, count=10, block_ms=200)
            found += [e.message for e in entries]
            if len(found) >= 2:
                break
        await streams.redis.aclose()
        return found

    trajectories = asyncio.run(roundtrip())
    assert [t.sample_index for t in sorted(trajectories, key=lambda t: t.sample_index)] == [0, 1]
    assert all(t.job_id == "serve-job" and t.response_ids.size > 0 for t in trajectories)
    # The replica's own registry (the one its engine and worker update), not a copy made where the app was built,
    # both through Serve's HTTP proxy and on the replica's metrics port (what the chart's PodMonitor scrapes).
    for metrics in (httpx.get(url + "/metrics", timeout=10).text, httpx.get(serve_app["metrics"], timeout=10).text):
        assert 'searchr1_rollout_trajectories_total{job="serve-job"} 2.0' in metrics
        # The HF engine's own queue, idle again; it has no paged KV cache, so no KV-cache ratio at all.
        assert 'searchr1_rollout_engine_requests{state="running"} 0.0' in metrics
        assert 'searchr1_rollout_engine_requests{state="waiting"} 0.0' in metrics
        assert "searchr1_rollout_kv_cache_usage_ratio" not in metrics
