"""One rollout replica's work: an engine, the agent loop, and a consumer of the rollout work queue.

Each replica is a consumer in the `rollout` group: it runs many episodes concurrently, batches the retrieval
calls of concurrent episodes into one HTTP request, and publishes finished trajectories to the reward queue.

Weights are pushed: the replica follows the weights stream of the job whose policy it holds (blocking reads) and
loads each version as soon as it is announced, so episodes already in flight (requests sent ahead, within the job's
staleness bound) continue on the newest policy. Before serving a request of policy version v it also makes sure
its engine holds v or newer (a job's first request, or one that overtook an announcement). Every version is
verified against its announced checksum before it is loaded; a mismatch is refused, counted and reported on the
job's events, and the engine keeps what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal

from pydantic import Field

from rollout.agent import Agent, HFTextCodec
from rollout.engines.base import Engine
from rollout.retrieval_client import BatchingRetriever, HTTPRetriever
from services.config import Settings
from services.contracts import JobEvent, RolloutRequest, Trajectory, WeightsPublished
from services.streams import Output, Streams, connect
from services.telemetry import counter, gauge, histogram
from services.weight_files import WeightsMismatch, verify
from services.worker import StreamWorker

log = logging.getLogger(__name__)

TOKENS = counter("searchr1_rollout_tokens_total", "Response tokens produced (model and inserted)", ["job", "kind"])
TRAJECTORIES = counter("searchr1_rollout_trajectories_total", "Episodes finished", ["job"])
TURNS = histogram("searchr1_rollout_turns", "Turns per episode", ["job"], buckets=(1, 2, 3, 4, 5, 6, 8, 12))
ENGINE_VERSION = gauge("searchr1_rollout_engine_version", "Policy version the engine holds", ["job"])
WEIGHT_LOADS = counter("searchr1_rollout_weight_loads_total", "Weight versions loaded", ["job"])
WEIGHTS_REFUSED = counter(
    "searchr1_rollout_weights_refused_total", "Announced weight versions refused: checksum mismatch", ["job"]
)


class RolloutSettings(Settings):
    model: str = "smollm2-135m-instruct"
    engine: Literal["vllm", "hf"] = "vllm"
    dtype: str = "float32"
    max_model_len: int = Field(4096, ge=64)
    kv_cache_gib: float = Field(2.0, gt=0, description="KV cache of the engine; on CPU, host memory it reserves")
    retriever_url: str = "http://127.0.0.1:8000"
    retriever_timeout_s: float = Field(30.0, gt=0)
    group: str = "rollout"
    concurrency: int = Field(64, ge=1, description="requests in flight per replica")
    weights_wait_s: float = Field(600.0, gt=0, description="how long to wait for an announced weight version")
    replicas: int = Field(1, ge=1)
    max_replicas: int | None = Field(None, ge=1, description="set: Serve scales from `replicas` to it on the queue")
    target_backlog_per_replica: int = Field(
        128, ge=1, description="rollout queue entries (waiting or in flight) one replica should carry"
    )
    replica_cpus: float = Field(1.0, gt=0)
    replica_gpus: float = Field(0.0, ge=0)
    omp_threads: int = Field(2, ge=1, description="CPU threads of the engine (OMP_NUM_THREADS)")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8001, ge=0, le=65535)


async def build_engine(settings: RolloutSettings) -> Engine:
    if settings.engine == "vllm":
        from rollout.engines.vllm import VLLMEngine

        return await VLLMEngine.create(
            settings.model,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            enforce_eager=True,
            # An explicit size: otherwise vLLM's CPU backend wants 92% of the machine's memory free at start.
            engine_kwargs={"kv_cache_memory_bytes": int(settings.kv_cache_gib * 2**30)},
        )
    from rollout.engines.hf import HFEngine

    return await asyncio.to_thread(HFEngine, settings.model, dtype=settings.dtype, max_model_len=settings.max_model_len)


class RolloutWorker:
    def __init__(self, settings: RolloutSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.streams = Streams(connect(settings), settings)
        self.retriever = BatchingRetriever(
            HTTPRetriever(settings.retriever_url, timeout_s=settings.retriever_timeout_s)
        )
        self.agent = Agent(engine, HFTextCodec(engine.tokenizer), self.retriever)
        self.job_id: str | None = None  # whose weights the engine holds (None: the base model)
        self._weights_lock = asyncio.Lock()
        self.consumer: StreamWorker[RolloutRequest] | None = None
        self._stopping = asyncio.Event()

    @property
    def base_model_path(self) -> str:
        return self.engine.model_path  # type: ignore[attr-defined]

    async def handle(self, request: RolloutRequest) -> list[Output]:
        await self.ensure_version(request.job_id, request.policy_version)
        trajectories = await self.agent.run_request(request)
        self.record(request.job_id, trajectories)
        return [Output(self.streams.reward, trajectory) for trajectory in trajectories]

    def record(self, job_id: str, trajectories: list[Trajectory]) -> None:
        for trajectory in trajectories:
            model_tokens = int(trajectory.loss_mask.sum())
            TOKENS.labels(job_id, "model").inc(model_tokens)
            TOKENS.labels(job_id, "inserted").inc(trajectory.response_ids.size - model_tokens)
            TRAJECTORIES.labels(job_id).inc()
            TURNS.labels(job_id).observe(trajectory.turns)

    async def ensure_version(self, job_id: str, version: int) -> None:
        """Hold `job_id`'s policy `version` (or newer) before generating for it."""
        async with self._weights_lock:
            if self.job_id == job_id and self.engine.version >= version:
                return
            switching = self.job_id not in (None, job_id)  # another job's weights: versions start over
            if version == 0:  # a job's first steps sample from its base model
                if switching:
                    await self.engine.load_weights(0, self.base_model_path, force=True)
                self.job_id = job_id
                ENGINE_VERSION.labels(job_id).set(0)
                return
            await self._load(await self.wait_for_weights(job_id, version), switching)

    async def _load(self, announced: WeightsPublished, switching: bool) -> None:
        """Verify an announced version, then swap it in (under the weights lock)."""
        job_id, started = announced.job_id, time.perf_counter()
        try:
            await asyncio.to_thread(verify, announced)
        except WeightsMismatch as exc:
            WEIGHTS_REFUSED.labels(job_id).inc()
            log.error("job %s: refused weights v%d: %s", job_id, announced.version, exc)
            message = f"a rollout replica refused weights v{announced.version}: {exc}"
            await self.streams.publish(self.streams.job(job_id, "events"),
                                       JobEvent(job_id=job_id, event="log", message=message))  # fmt: skip
            raise
        await self.engine.load_weights(announced.version, announced.uri, force=switching)
        self.job_id = job_id
        ENGINE_VERSION.labels(job_id).set(announced.version)
        WEIGHT_LOADS.labels(job_id).inc()
        log.info("loaded %s weights v%d in %.1fs", job_id, announced.version, time.perf_counter() - started)

    async def wait_for_weights(self, job_id: str, version: int) -> WeightsPublished:
        stream = self.streams.job(job_id, "weights")
        deadline = time.monotonic() + self.settings.weights_wait_s
        while True:
            latest = await self.streams.latest(stream, WeightsPublished)
            if latest is not None and latest.version >= version:
                return latest
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} never announced weights v{version} on {stream}")
            await asyncio.sleep(0.2)

    async def follow_weights(self, block_ms: int = 1000) -> None:
        """Load each version the held job announces, as soon as it is announced, until `stop()`. A refused version
        is skipped (the next announcement, or a request that needs it, tries again)."""
        job_id, cursor = None, "0-0"
        while not self._stopping.is_set():
            if self.job_id != job_id:  # another job's weights: from its newest announcement on
                job_id, cursor = self.job_id, "0-0"
                if job_id is not None:
                    newest = await self.streams.latest_entry(self.streams.job(job_id, "weights"), WeightsPublished)
                    if newest is not None:
                        cursor = newest.entry_id
                        await self._load_if_newer(job_id, newest.message)
            if job_id is None:
                await asyncio.sleep(block_ms / 1000)
                continue
            entries = await self.streams.entries(
                self.streams.job(job_id, "weights"), WeightsPublished, after=cursor, block_ms=block_ms
            )
            for entry in entries:
                cursor = entry.entry_id
                await self._load_if_newer(job_id, entry.message)

    async def _load_if_newer(self, job_id: str, announced: WeightsPublished | None) -> None:
        async with self._weights_lock:
            if announced is not None and self.job_id == job_id and announced.version > self.engine.version:
                with contextlib.suppress(WeightsMismatch):
                    await self._load(announced, switching=False)

    async def run(self) -> None:
        """Consume the rollout queue until `stop()` (drains in-flight episodes), following weights meanwhile."""
        self.consumer = StreamWorker(
            self.streams, stream=self.streams.rollout, group=self.settings.group, message_type=RolloutRequest,
            handle=self.handle, concurrency=self.settings.concurrency, read_count=self.settings.concurrency,
        )  # fmt: skip
        follower = asyncio.create_task(self.follow_weights(), name="weights-follower")
        try:
            await self.consumer.run()
        finally:
            self._stopping.set()
            await follower

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.request_stop()

    async def close(self) -> None:
        await self.retriever.aclose()
        await self.engine.close()
        await self.streams.aclose()
