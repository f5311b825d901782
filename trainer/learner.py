"""The learner's driver: one training job from its first step (or its last checkpoint) to its last.

Per step: sample prompts -> RolloutRequests (n per prompt) -> gather ScoredTrajectories from the job's stream
-> advantages and update -> write weights v+1 and announce them -> metrics -> eval and checkpoint on schedule.
Everything a person watching the job needs goes to the job's events stream (state, metrics, checkpoints).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from services.contracts import (
    JobEvent,
    JobSpec,
    JobState,
    RewardConfig,
    RolloutRequest,
    SamplingParams,
    ScoredTrajectory,
)
from services.prompts import build_prompt_ids
from services.streams import Streams
from services.telemetry import gauge
from trainer.batch import collate
from trainer.collector import Collector, Gathered
from trainer.data import Datasets, Example, PromptStream, dataset_label
from trainer.update import Models, train_step
from trainer.weights import save_version

log = logging.getLogger(__name__)

STEP = gauge("searchr1_learner_step", "Training steps done", ["job"])
REWARD_MEAN = gauge("searchr1_learner_reward_mean", "Mean reward of the step's trajectories", ["job"])
KL = gauge("searchr1_learner_kl", "KL to the reference policy", ["job"])
ENTROPY = gauge("searchr1_learner_entropy", "Mean entropy of model tokens", ["job"])
STEP_SECONDS = gauge("searchr1_learner_step_seconds", "Seconds per phase of the last step", ["job", "phase"])
VALID_SEARCH_RATIO = gauge("searchr1_learner_valid_search_ratio", "Share of turns with a valid action", ["job"])
EVAL_EM = gauge("searchr1_learner_eval_em", "Exact match on an eval set (greedy)", ["job", "dataset"])


@dataclass
class LearnerContext:
    spec: JobSpec
    job_id: str
    output_dir: Path
    streams: Streams
    models: Models
    tokenizer: Any
    data: Datasets
    device: torch.device
    eval_limit: int | None = None  # examples per eval data set (None: all)


class Learner:
    def __init__(self, ctx: LearnerContext) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.collector = Collector(ctx.streams, ctx.job_id)
        self.prompts = PromptStream(ctx.data.train, seed=ctx.spec.data.shuffle_seed)
        self.version = 0
        self.step = 0
        self.checkpoint_dir = ctx.output_dir / "checkpoints"
        self.weights_root = ctx.output_dir / "weights"

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.collector.start()
        resumed = self.resume()
        if resumed:
            await self.publish_weights()  # rollout engines must serve the resumed policy, not the base model
        await self.event("state", state=JobState.RUNNING, message=f"resumed at step {self.step}" if resumed else "")
        schedule = self.spec.schedule
        if schedule.eval_before_train and self.step == 0 and self.ctx.data.eval:
            await self.evaluate()
        while self.step < schedule.total_steps:
            await self.train_one_step()
            if self.ctx.data.eval and (self.step % schedule.eval_interval == 0 or self.step == schedule.total_steps):
                await self.evaluate()
            if self.step % schedule.save_interval == 0 or self.step == schedule.total_steps:
                await self.checkpoint()
        await self.event("state", state=JobState.SUCCEEDED, message=f"trained {self.step} steps")

    async def event(self, kind: str, **fields: Any) -> None:
        event = JobEvent(job_id=self.ctx.job_id, event=kind, **fields)
        await self.ctx.streams.publish(self.ctx.streams.job(self.ctx.job_id, "events"), event)

    # -- one step ----------------------------------------------------------------------------------------
    def requests_for(
        self, examples: list[Example], n: int, sampling: SamplingParams, is_eval: bool
    ) -> list[RolloutRequest]:
        rollout = self.spec.rollout
        reward = RewardConfig(kind="em") if is_eval else self.spec.reward
        return [
            RolloutRequest(
                job_id=self.ctx.job_id,
                prompt_uid=example.uid,
                prompt_ids=np.asarray(
                    build_prompt_ids(self.ctx.tokenizer, example.question, rollout.max_prompt_tokens), dtype=np.int32
                ),
                n_samples=n,
                policy_version=self.version,
                golden_answers=list(example.golden_answers),
                data_source=example.source,
                sampling=sampling,
                max_turns=rollout.max_turns,
                max_obs_tokens=rollout.max_obs_tokens,
                max_context_tokens=rollout.max_context_tokens,
                topk=rollout.topk,
                reward=reward,
                is_eval=is_eval,
            )
            for example in examples
        ]

    async def train_one_step(self) -> dict[str, float]:
        spec, algo, rollout = self.spec, self.spec.algorithm, self.spec.rollout
        started = time.perf_counter()
        examples = self.prompts.next_batch(min(algo.prompts_per_step, len(self.prompts.examples)))
        sampling = SamplingParams(
            temperature=rollout.temperature, top_p=rollout.top_p, max_tokens_per_turn=rollout.max_tokens_per_turn
        )
        requests = self.requests_for(examples, algo.group_size, sampling, is_eval=False)
        gathered = await self.rollouts(requests, algo.max_staleness)
        rollout_s = time.perf_counter() - started
        batch = collate(gathered.trajectories, pad_id=self.pad_id).to(self.ctx.device)
        update_started = time.perf_counter()
        stats = train_step(algo, batch, self.ctx.models, temperature=rollout.temperature)
        update_s = time.perf_counter() - update_started
        metrics = self.step_metrics(gathered.trajectories, stats)
        self.step += 1
        self.version += 1
        weights_started = time.perf_counter()
        await self.publish_weights()
        weights_s = time.perf_counter() - weights_started
        metrics.update(rollout_seconds=rollout_s, update_seconds=update_s, weights_seconds=weights_s,
                       resent_requests=gathered.resent, dropped_stale=gathered.dropped_stale,
                       update_tokens_per_second=float(batch.attention_mask.sum()) / max(update_s, 1e-9))  # fmt: skip
        self.export(metrics)
        await self.event("metrics", step=self.step, data=metrics)
        log.info("job %s step %d/%d reward %.3f", self.ctx.job_id, self.step, spec.schedule.total_steps,
                 metrics["reward_mean"])  # fmt: skip
        return metrics

    async def rollouts(self, requests: list[RolloutRequest], max_staleness: int) -> Gathered:
        """Send the requests and gather their scored trajectories: requests that make no progress for
        `request_timeout_s` are sent again, and the step fails after three times that."""
        timeout = self.spec.rollout.request_timeout_s
        await self.collector.send(requests)
        return await self.collector.gather(
            requests, self.version, max_staleness, retry_after_s=timeout, timeout_s=timeout * 3
        )

    @property
    def pad_id(self) -> int:
        tokenizer = self.ctx.tokenizer
        return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0)

    def step_metrics(self, scored: list[ScoredTrajectory], stats: dict[str, float]) -> dict[str, float]:
        """Statistics of the step's trajectories (call before the version advances) and of the update."""
        trajectories = [s.trajectory for s in scored]
        turns = sum(t.turns for t in trajectories)
        return {
            **stats,
            # KL to the reference: the loss term (GRPO), else the penalty folded into the rewards (PPO).
            "kl": stats.get("kl", stats.get("kl_in_reward", 0.0)),
            "staleness": float(np.mean([self.version - t.oldest_version for t in trajectories])),
            "reward_mean": float(np.mean([s.reward for s in scored])),
            "response_length": float(np.mean([t.response_ids.size for t in trajectories])),
            "model_tokens": float(np.mean([int(t.loss_mask.sum()) for t in trajectories])),
            "turns": float(np.mean([t.turns for t in trajectories])),
            "searches": float(np.mean([t.searches for t in trajectories])),
            "valid_action_ratio": sum(t.valid_actions for t in trajectories) / max(turns, 1),
            "finished_ratio": float(np.mean([t.finished for t in trajectories])),
            "format_valid_ratio": float(np.mean([s.format_valid for s in scored])),
            "trajectories": float(len(scored)),
        }

    def export(self, metrics: dict[str, float]) -> None:
        job = self.ctx.job_id
        STEP.labels(job).set(self.step)
        REWARD_MEAN.labels(job).set(metrics["reward_mean"])
        KL.labels(job).set(metrics["kl"])
        ENTROPY.labels(job).set(metrics.get("entropy", 0.0))
        VALID_SEARCH_RATIO.labels(job).set(metrics["valid_action_ratio"])
        for phase in ("rollout", "update", "weights"):
            STEP_SECONDS.labels(job, phase).set(metrics[f"{phase}_seconds"])

    async def publish_weights(self) -> None:
        policy = self.ctx.models.policy
        announcement = save_version(policy, self.ctx.tokenizer, self.weights_root, self.ctx.job_id, self.version,
                                    self.step)  # fmt: skip
        await self.ctx.streams.publish(self.ctx.streams.job(self.ctx.job_id, "weights"), announcement)

    # -- evaluation --------------------------------------------------------------------------------------
    async def evaluate(self) -> dict[str, float]:
        """Greedy rollouts of the eval sets with the current policy; exact match per data set."""
        examples = self.eval_examples()
        sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens_per_turn=self.spec.rollout.max_tokens_per_turn)
        requests = self.requests_for(examples, 1, sampling, is_eval=True)
        gathered = await self.rollouts(requests, max_staleness=0)
        per_dataset: dict[str, list[float]] = {}
        for scored in gathered.trajectories:
            per_dataset.setdefault(dataset_label(scored.trajectory.data_source), []).append(scored.reward)
        result = {f"eval_em/{name}": float(np.mean(scores)) for name, scores in sorted(per_dataset.items())}
        for key, value in result.items():
            EVAL_EM.labels(self.ctx.job_id, key.split("/", 1)[1]).set(value)
        await self.event("eval", step=self.step, data=result)
        log.info("job %s eval at step %d: %s", self.ctx.job_id, self.step, result)
        return result

    def eval_examples(self) -> list[Example]:
        if self.ctx.eval_limit is None:
            return list(self.ctx.data.eval)
        per_dataset: dict[str, list[Example]] = {}
        for example in self.ctx.data.eval:
            bucket = per_dataset.setdefault(example.dataset, [])
            if len(bucket) < self.ctx.eval_limit:
                bucket.append(example)
        return [example for bucket in per_dataset.values() for example in bucket]

    # -- checkpoints -------------------------------------------------------------------------------------
    async def checkpoint(self) -> Path:
        """Policy (HF safetensors), optimiser, schedulers, RNG and data position: a resumed run continues exactly."""
        folder = self.checkpoint_dir / f"step-{self.step}"
        staging = folder.with_name(folder.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        models = self.ctx.models
        models.policy.save_pretrained(staging / "policy", safe_serialization=True)
        self.ctx.tokenizer.save_pretrained(staging / "policy")
        state = {
            "optimizer": models.optimizer.state_dict(),
            "scheduler": models.scheduler.state_dict(),
            "critic": models.critic.state_dict() if models.critic is not None else None,
            "critic_optimizer": models.critic_optimizer.state_dict() if models.critic_optimizer else None,
            "critic_scheduler": models.critic_scheduler.state_dict() if models.critic_scheduler else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }
        torch.save(state, staging / "trainer_state.pt")
        (staging / "progress.json").write_text(
            json.dumps({"step": self.step, "version": self.version, "prompts": self.prompts.state_dict()})
        )
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
        await self.event("checkpoint", step=self.step, data={"path": str(folder)})
        return folder

    def latest_checkpoint(self) -> Path | None:
        found = [p for p in self.checkpoint_dir.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")]
        return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)

    def resume(self) -> bool:
        folder = self.latest_checkpoint()
        if folder is None:
            return False
        models = self.ctx.models
        saved = AutoModelForCausalLM.from_pretrained(folder / "policy", dtype=next(models.policy.parameters()).dtype)
        models.policy.load_state_dict(saved.state_dict())
        state = torch.load(folder / "trainer_state.pt", weights_only=False)
        models.optimizer.load_state_dict(state["optimizer"])
        models.scheduler.load_state_dict(state["scheduler"])
        if models.critic is not None and state["critic"] is not None:
            models.critic.load_state_dict(state["critic"])
            models.critic_optimizer.load_state_dict(state["critic_optimizer"])  # type: ignore[union-attr]
            models.critic_scheduler.load_state_dict(state["critic_scheduler"])  # type: ignore[union-attr]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        progress = json.loads((folder / "progress.json").read_text())
        self.step, self.version = progress["step"], progress["version"]
        self.prompts.load_state_dict(progress["prompts"])
        log.info("job %s resumed from %s", self.ctx.job_id, folder)
        return True
