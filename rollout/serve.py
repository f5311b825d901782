"""The rollout tier as a Ray Serve application: `python -m rollout.serve` (or `searchr1 rollout serve`).

Each replica holds one engine (vLLM; `num_gpus` from settings, 0 on CPU) and consumes the rollout work queue
(see rollout/worker.py); Serve manages the replicas and routes the HTTP API: `POST /v1/agent` answers one
question with the current policy and returns the whole trace, `POST /v1/generate` samples one completion,
plus `/healthz`, `/readyz` and `/metrics`. With `max_replicas` set, Serve scales the replicas on the queue's
backlog (rollout/autoscaling.py), which each replica reports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from rollout.autoscaling import BACKLOG_METRIC, BacklogPolicy
from rollout.engines.base import SamplingOptions
from rollout.worker import RolloutSettings, RolloutWorker, build_engine
from services.contracts import EpisodeConfig, RolloutRequest
from services.prompts import build_prompt_ids
from services.streams import Streams
from services.telemetry import configure_logging, serve_metrics

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingConfig

log = logging.getLogger(__name__)


class AgentQuery(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    episode: EpisodeConfig = Field(
        default_factory=lambda: EpisodeConfig().greedy(), description="how the episode plays (default: greedy)"
    )


class GenerateQuery(BaseModel):
    prompt: str = Field(min_length=1, max_length=20000)
    max_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, max_length=8)


async def answer(worker: RolloutWorker, query: AgentQuery) -> dict[str, Any]:
    """Answer one question with the weights the engine holds now; the whole episode comes back."""
    episode, engine_length = query.episode, worker.engine.max_model_len
    if engine_length is not None and episode.max_context_tokens > engine_length:
        raise HTTPException(
            422, f"episode.max_context_tokens ({episode.max_context_tokens}) exceeds the engine's max_model_len "
            f"({engine_length}); ask for a shorter episode",
        )  # fmt: skip
    prompt_ids = build_prompt_ids(worker.engine.tokenizer, query.question, episode.max_prompt_tokens)
    request = RolloutRequest(job_id="adhoc", prompt_uid="adhoc", prompt_ids=np.asarray(prompt_ids), episode=episode)
    try:
        [trajectory] = await worker.agent.run_request(request)
    except ValueError as exc:  # e.g. a question too long for the engine's context
        raise HTTPException(422, str(exc)) from None
    return {
        "question": query.question,
        "trace": trajectory.response_text,
        "policy_version": worker.engine.version,
        "turns": trajectory.turns,
        "searches": trajectory.searches,
        "finished": trajectory.finished,
        "response_tokens": int(trajectory.response_ids.size),
        "model_tokens": int(trajectory.loss_mask.sum()),
    }


async def generate_once(worker: RolloutWorker, query: GenerateQuery) -> dict[str, Any]:
    tokenizer = worker.engine.tokenizer
    sampling = SamplingOptions(temperature=query.temperature, top_p=query.top_p)
    try:
        result = await worker.engine.generate(tokenizer.encode(query.prompt), sampling, query.stop, query.max_tokens)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return {
        "text": tokenizer.decode(result.token_ids),
        "token_ids": list(result.token_ids),
        "finish_reason": result.finish_reason,
        "policy_version": worker.engine.version,
    }


def readiness(worker: RolloutWorker) -> Response:
    ready = worker.consumer is not None and worker.consumer.ready
    return Response("ready\n" if ready else "starting\n", status_code=200 if ready else 503)


def metrics_response() -> Response:
    """The Prometheus exposition of the process answering. Rendered per request: an exposition app built where the
    Serve application is built would travel to the replicas pickled, with a frozen copy of the builder's registry."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def replica_env(settings: RolloutSettings) -> dict[str, str]:
    """Replicas run in Ray worker processes, which inherit the Ray node's environment, not this process's."""
    passed = {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "HF_", "SEARCHR1_MODEL_CACHE"))}
    return {**passed, "OMP_NUM_THREADS": str(settings.omp_threads)}


class ReportsBacklog:
    """What a replica tells Serve's autoscaler: Serve calls `record_autoscaling_stats` on each replica and hands the
    numbers to the deployment's policy (`BacklogPolicy`)."""

    streams: Streams
    group: str

    async def record_autoscaling_stats(self) -> dict[str, float]:
        # The group as the consumer creates it, so a report that comes before the consumer has started still counts.
        await self.streams.ensure_group(self.streams.rollout, self.group)
        stats = await self.streams.stats(self.streams.rollout, self.group)
        return {BACKLOG_METRIC: float(stats.lag + stats.pending)}


def autoscaling_config(settings: RolloutSettings) -> AutoscalingConfig | None:
    """Serve's AutoscalingConfig for `replicas`..`max_replicas` on the queue backlog; None: a fixed `replicas`."""
    if settings.max_replicas is None:
        return None
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    policy = AutoscalingPolicy(
        policy_function=f"{BacklogPolicy.__module__}:{BacklogPolicy.__name__}",
        policy_kwargs={"target_backlog_per_replica": settings.target_backlog_per_replica},
    )
    return AutoscalingConfig(min_replicas=settings.replicas, max_replicas=settings.max_replicas, policy=policy)


def build_app(settings: RolloutSettings) -> Any:
    """The Serve application: replicas of one deployment, each an engine plus a queue consumer."""
    from ray import serve

    api = FastAPI(title="searchr1 rollout", version="0.1.0")

    autoscaling = autoscaling_config(settings)
    replicas: dict[str, Any] = (
        {"num_replicas": settings.replicas} if autoscaling is None else {"autoscaling_config": autoscaling}
    )

    @serve.deployment(
        name="rollout",
        **replicas,
        ray_actor_options={
            "num_cpus": settings.replica_cpus,
            "num_gpus": settings.replica_gpus,
            "runtime_env": {"env_vars": replica_env(settings)},
        },
        max_ongoing_requests=64,
        health_check_period_s=10,
        health_check_timeout_s=60,
    )
    @serve.ingress(api)
    class RolloutReplica(ReportsBacklog):
        async def __init__(self, settings_json: str) -> None:
            configure_logging()
            replica_settings = RolloutSettings.model_validate_json(settings_json)
            # What the chart's PodMonitor scrapes (SEARCHR1_METRICS_PORT): this replica's figures, whichever replica
            # Serve's proxy routes an HTTP /metrics to. With several replicas in one pod, the first one serves it.
            serve_metrics(replica_settings.metrics_host, replica_settings.metrics_port, "rollout replica")
            self.worker = RolloutWorker(replica_settings, await build_engine(replica_settings))
            self.streams, self.group = self.worker.streams, replica_settings.group
            self.consumer_task = asyncio.create_task(self.worker.run())

        async def check_health(self) -> None:
            if self.consumer_task.done():
                raise RuntimeError(f"rollout consumer stopped: {self.consumer_task.exception()!r}")

        @api.get("/healthz")
        def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

        @api.get("/readyz")
        def readyz(self) -> Response:
            return readiness(self.worker)

        @api.get("/metrics")
        def metrics(self) -> Response:
            return metrics_response()

        @api.post("/v1/agent")
        async def agent(self, query: AgentQuery) -> dict[str, Any]:
            return await answer(self.worker, query)

        @api.post("/v1/generate")
        async def generate(self, query: GenerateQuery) -> dict[str, Any]:
            return await generate_once(self.worker, query)

    return RolloutReplica.bind(settings.model_dump_json())


def app(args: dict[str, str]) -> Any:
    """The import path a RayService names (`rollout.serve:app`): its args override the SEARCHR1_* settings."""
    return build_app(RolloutSettings.load(**args))


def main() -> None:
    import ray
    from ray import serve

    settings = RolloutSettings.load()
    configure_logging(settings.log_level, settings.log_format)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        # Without RAY_ADDRESS start a cluster of our own ("local"): never join a stale one by accident.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, log_to_driver=True)
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    serve.run(build_app(settings), name="rollout", route_prefix="/", blocking=False)
    log.info("rollout tier serving on http://%s:%d", settings.http_host, settings.http_port)
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()

    asyncio.run(wait())
    started = time.monotonic()
    serve.shutdown()
    ray.shutdown()
    log.info("rollout tier stopped in %.1fs", time.monotonic() - started)


if __name__ == "__main__":
    main()
