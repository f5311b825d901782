"""The learner's driver: one training job from its first step (or its last checkpoint) to its last.

Per step: sample prompts -> RolloutRequests (n per prompt) -> gather ScoredTrajectories from the job's stream
-> advantages and update -> write weights v+1 and announce them -> metrics -> eval and checkpoint on schedule.
An evaluation job (`kind: eval`) announces its model's weights and runs one greedy eval instead.
Everything a person watching the job needs goes to the job's events stream (state, metrics, checkpoints).
This driver runs on rank 0 only; with several FSDP ranks it hands updates and state gathering to `Collective`,
which the other ranks follow.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.contracts import (
    JobEvent,
    JobSpec,
    JobState,
    RewardConfig,
    RolloutRequest,
    ScoredTrajectory,
)
from services.prompts import build_turn_prefix_ids
from services.streams import Streams
from services.telemetry import gauge
from trainer.batch import collate
from trainer.collective import Collective
from trainer.collector import Collector, Gathered
from trainer.data import Datasets, Example, PromptStream, first_per_dataset, prompt_ids_for
from trainer.ranks import SINGLE, Ranks
from trainer.update import Models
from trainer.weights import save_version

log = logging.getLogger(__name__)

STEP = gauge("searchr1_learner_step", "Training steps done", ["job"])
REWARD_MEAN = gauge("searchr1_learner_reward_mean", "Mean reward of the step's trajectories", ["job"])
KL = gauge("searchr1_learner_kl", "KL to the reference policy", ["job"])
ENTROPY = gauge("searchr1_learner_entropy", "Mean entropy of model tokens", ["job"])
STEP_SECONDS = gauge("searchr1_learner_step_seconds", "Seconds per phase of the last step", ["job", "phase"])
VALID_SEARCH_RATIO = gauge("searchr1_learner_valid_search_ratio", "Share of turns with a valid action", ["job"])
EVAL_EM = gauge("searchr1_learner_eval_em", "Exact match on an eval set (greedy)", ["job", "dataset"])


def eval_figures(per_dataset: dict[str, list[ScoredTrajectory]]) -> dict[str, float]:
    """Exact match (`eval_em/<set>`) and valid-action share of turns (`eval_valid_action/<set>`) per data set."""
    result: dict[str, float] = {}
    for name, scored_list in sorted(per_dataset.items()):
        result[f"eval_em/{name}"] = float(np.mean([s.reward for s in scored_list]))
        turns = sum(s.trajectory.turns for s in scored_list)
        result[f"eval_valid_action/{name}"] = sum(s.trajectory.valid_actions for s in scored_list) / max(turns, 1)
    return result


@dataclass(frozen=True)
class StepRequests:
    """A future step's rollout requests, sent ahead, and where the prompt stream stood before they were drawn
    (the position a checkpoint records while they are in flight, so a resumed job draws them again)."""

    requests: list[RolloutRequest]
    prompts_before: dict[str, Any]


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
    ranks: Ranks = SINGLE  # this driver is rank 0 of them


class Learner:
    def __init__(self, ctx: LearnerContext) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.work = Collective(ctx.spec, ctx.models, ctx.device, ctx.ranks)
        self.collector = Collector(ctx.streams, ctx.job_id)
        training = ctx.spec.kind == "train"
        self._prompts = PromptStream(ctx.data.train, seed=ctx.spec.data.shuffle_seed) if training else None
        self.version = 0
        self.step = 0
        self.ahead: deque[StepRequests] = deque()  # requests in flight for the coming steps, oldest first
        self.sent_through = 0  # the last step whose rollout requests are sent
        self.checkpoint_dir = ctx.output_dir / "checkpoints"
        self.weights_root = ctx.output_dir / "weights"

    @property
    def prompts(self) -> PromptStream:
        if self._prompts is None:
            raise RuntimeError(f"job {self.ctx.job_id} is an evaluation: it has no training prompts")
        return self._prompts

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.collector.start()
        message = await (self.run_evaluation() if self.spec.kind == "eval" else self.run_training())
        if self.ctx.ranks.world > 1:
            self.work.stop()
        await self.event("state", state=JobState.SUCCEEDED, message=message)

    async def run_training(self) -> str:
        resumed = self.resume()
        if resumed:
            await self.publish_weights()  # rollout engines must serve the resumed policy, not the base model
        await self.event("state", state=JobState.RUNNING, message=f"resumed at step {self.step}" if resumed else "")
        schedule = self.spec.schedule
        deadline = None if schedule.time_limit_s is None else time.monotonic() + schedule.time_limit_s
        out_of_time = False
        if schedule.eval_before_train and self.step == 0 and self.ctx.data.eval:
            await self.evaluate()
        while self.step < schedule.total_steps and not out_of_time:
            await self.train_one_step()
            # Past the time budget, this step is the last: it gets the final eval and checkpoint.
            out_of_time = deadline is not None and time.monotonic() >= deadline
            last = out_of_time or self.step == schedule.total_steps
            if self.ctx.data.eval and (self.step % schedule.eval_interval == 0 or last):
                await self.evaluate()
            if self.step % schedule.save_interval == 0 or last:
                await self.checkpoint()
        if out_of_time and self.step < schedule.total_steps:
            limit = f"{schedule.time_limit_s:g}"
            return f"trained {self.step} of {schedule.total_steps} steps: time limit of {limit} s reached"
        return f"trained {self.step} steps"

    async def run_evaluation(self) -> str:
        """Announce the model's weights as version 1 (version 0 is whatever base model the rollout engines
        started with), so the engines load and serve exactly this model; then one greedy eval."""
        self.version = 1
        await self.publish_weights()
        await self.event("state", state=JobState.RUNNING)
        result = await self.evaluate()
        return "EM " + ", ".join(
            f"{key.split('/', 1)[1]} {value:.3f}" for key, value in result.items() if key.startswith("eval_em/")
        )

    async def event(self, kind: str, **fields: Any) -> None:
        event = JobEvent(job_id=self.ctx.job_id, event=kind, **fields)
        await self.ctx.streams.publish(self.ctx.streams.job(self.ctx.job_id, "events"), event)

    # -- one step ----------------------------------------------------------------------------------------
    def requests_for(
        self, examples: list[Example], n: int, is_eval: bool, search_enabled: bool = True
    ) -> list[RolloutRequest]:
        rollout, tokenizer = self.spec.rollout, self.ctx.tokenizer
        # Evals score greedy EM, in the job's compat mode (the reference's EM reads prompt + response).
        reward = RewardConfig(kind="em", compat=self.spec.reward.compat) if is_eval else self.spec.reward
        episode = rollout.episode.greedy() if is_eval else rollout.episode
        prefix = np.asarray(build_turn_prefix_ids(tokenizer, rollout.prompt_style), dtype=np.int32)
        return [
            RolloutRequest(
                job_id=self.ctx.job_id,
                prompt_uid=example.uid,
                prompt_ids=np.asarray(prompt_ids_for(example, tokenizer, rollout), dtype=np.int32),
                turn_prefix_ids=prefix,
                n_samples=n,
                policy_version=self.version,
                golden_answers=list(example.golden_answers),
                data_source=example.source,
                episode=episode,
                reward=reward,
                is_eval=is_eval,
                search_enabled=search_enabled,
            )
            for example in examples
        ]

    async def send_ahead(self) -> None:
        """Keep rollout requests in flight for the coming steps, as far as `max_staleness` allows: step n's
        requests go out once n - 1 - max_staleness steps are trained, so nothing sampled from the policy of the
        time they were sent lags the policy that trains on them by more than the bound (AReaL's rule: at most
        (max_staleness + version + 1) steps' requests sent in all). With 0, one step's requests go out after the
        update before it, as a synchronous loop does; never beyond the job's last step."""
        algo, total = self.spec.algorithm, self.spec.schedule.total_steps
        while True:
            step = self.sent_through + 1  # the step the next requests would train
            if step > total or step - 1 - self.step > algo.max_staleness:
                return
            before = self.prompts.state_dict()
            examples = self.prompts.next_batch(min(algo.prompts_per_step, len(self.prompts.examples)))
            requests = self.requests_for(examples, algo.group_size, is_eval=False)
            await self.collector.send(requests)
            self.ahead.append(StepRequests(requests, before))
            self.sent_through = step

    async def train_one_step(self) -> dict[str, float]:
        spec, algo, rollout = self.spec, self.spec.algorithm, self.spec.rollout
        started = time.perf_counter()
        await self.send_ahead()
        requests = self.ahead.popleft().requests
        report = self.progress_reporter(len(requests) * algo.group_size, phase="rollout")
        await report(0)
        gathered = await self.gather(requests, algo.max_staleness, progress=report)
        rollout_s = time.perf_counter() - started
        # While this step updates, the next ones' rollouts run (when the bound allows any).
        await self.send_ahead()
        batch = collate(gathered.trajectories, pad_id=self.pad_id, policy_version=self.version)
        update_started = time.perf_counter()
        stats = self.work.train(batch, temperature=rollout.temperature)
        update_s = time.perf_counter() - update_started
        metrics = self.step_metrics(gathered.trajectories, stats)
        self.step += 1
        self.version += 1
        weights_started = time.perf_counter()
        await self.publish_weights()
        weights_s = time.perf_counter() - weights_started
        metrics.update(rollout_seconds=rollout_s, update_seconds=update_s, weights_seconds=weights_s,
                       resent_requests=gathered.resent, dropped_stale=gathered.dropped_stale,
                       trajectories_seen=gathered.seen, duplicate_trajectories=gathered.duplicates,
                       update_tokens_per_second=stats["trained_tokens"] / max(update_s, 1e-9))  # fmt: skip
        self.export(metrics)
        await self.event("metrics", step=self.step, data=metrics)
        log.info("job %s step %d/%d reward %.3f", self.ctx.job_id, self.step, spec.schedule.total_steps,
                 metrics["reward_mean"])  # fmt: skip
        return metrics

    async def rollouts(
        self,
        requests: list[RolloutRequest],
        max_staleness: int,
        progress: Callable[[int], Awaitable[None]] | None = None,
    ) -> Gathered:
        """Send the requests and gather their scored trajectories."""
        await self.collector.send(requests)
        return await self.gather(requests, max_staleness, progress)

    async def gather(
        self,
        requests: list[RolloutRequest],
        max_staleness: int,
        progress: Callable[[int], Awaitable[None]] | None = None,
    ) -> Gathered:
        """Gather the scored trajectories of requests sent before: requests that make no progress for
        `request_timeout_s` are sent again, and the step fails after three times that."""
        timeout = self.spec.rollout.request_timeout_s
        return await self.collector.gather(
            requests, self.version, max_staleness, retry_after_s=timeout, timeout_s=timeout * 3, progress=progress
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
            # By trajectory id: equal to `trajectories` unless one was trained twice.
            "distinct_trajectories": float(len({t.msg_id for t in trajectories})),
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
        state = self.work.full_state(optimizers=False)["policy"]
        announcement = save_version(self.ctx.models.policy, self.ctx.tokenizer, self.weights_root, self.ctx.job_id,
                                    self.version, self.step, state_dict=state)  # fmt: skip
        await self.ctx.streams.publish(self.ctx.streams.job(self.ctx.job_id, "weights"), announcement)

    # -- evaluation --------------------------------------------------------------------------------------
    async def evaluate(self) -> dict[str, float]:
        """Greedy rollouts of the eval sets with the current policy: exact match (`eval_em/<set>`) and the share of
        turns with a valid action (`eval_valid_action/<set>`) per data set; with `data.eval_without_search`, the
        exact match again with search finding nothing (`eval_em_no_search/<set>`).

        Both passes go out as one batch, interleaved, so the engine batches the control's (short) episodes beside the
        searching ones instead of running the two passes one after the other."""
        examples = first_per_dataset(self.ctx.data.eval, self.ctx.eval_limit)
        passes = [True, False] if self.spec.data.eval_without_search else [True]
        per_pass = [self.requests_for(examples, 1, is_eval=True, search_enabled=search) for search in passes]
        batch = [request for same_example in zip(*per_pass, strict=True) for request in same_example]
        report = self.progress_reporter(len(batch), phase="eval")
        await report(0)
        gathered = await self.rollouts(batch, max_staleness=0, progress=report)
        request_by_id = {request.msg_id: request for request in batch}
        dataset_of = {example.uid: example.dataset for example in examples}
        scored_by_pass: dict[bool, dict[str, list[ScoredTrajectory]]] = {search: {} for search in passes}
        for scored in gathered.trajectories:
            trajectory = scored.trajectory
            request = request_by_id[gathered.request_of[trajectory.msg_id]]
            per_dataset = scored_by_pass[request.search_enabled]
            per_dataset.setdefault(dataset_of[trajectory.prompt_uid], []).append(scored)
        result = eval_figures(scored_by_pass[True])
        if False in scored_by_pass:
            control = eval_figures(scored_by_pass[False])
            result.update({key.replace("eval_em/", "eval_em_no_search/"): value for key, value in control.items()
                           if key.startswith("eval_em/")})  # fmt: skip
        for key, value in result.items():
            if key.startswith("eval_em/"):
                EVAL_EM.labels(self.ctx.job_id, key.split("/", 1)[1]).set(value)
        await self.event("eval", step=self.step, data=result)
        log.info("job %s eval at step %d: %s", self.ctx.job_id, self.step, result)
        return result

    def progress_reporter(
        self, total: int, phase: str = "eval", interval_s: float = 1.0
    ) -> Callable[[int], Awaitable[None]]:
        """A progress callback that tells the job's events how many of the `total` episodes of a phase (an eval's,
        a step's rollouts) are scored: at most once per `interval_s`, and always the first and the last count."""
        last_sent = -math.inf

        async def report(done: int) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if 0 < done < total and now - last_sent < interval_s:
                return
            last_sent = now
            await self.event("progress", step=self.step, data={"phase": phase, "done": done, "total": total})

        return report

    # -- checkpoints -------------------------------------------------------------------------------------
    async def checkpoint(self) -> Path:
        """Policy (HF safetensors), optimiser, schedulers, RNG and data position: a resumed run continues exactly."""
        folder = self.checkpoint_dir / f"step-{self.step}"
        staging = folder.with_name(folder.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        self.work.save(staging, self.ctx.tokenizer)
        (staging / "progress.json").write_text(
            json.dumps({"step": self.step, "version": self.version, "prompts": self.prompts_position()})
        )
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
        await self.event("checkpoint", step=self.step, data={"path": str(folder), "policy": str(folder / "policy")})
        return folder

    def prompts_position(self) -> dict[str, Any]:
        """Where a resumed job must draw its next step's prompts: before the first step still in flight, if any."""
        return self.ahead[0].prompts_before if self.ahead else self.prompts.state_dict()

    def latest_checkpoint(self) -> Path | None:
        found = [p for p in self.checkpoint_dir.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")]
        return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)

    def resume(self) -> bool:
        folder = self.latest_checkpoint()
        if folder is None:
            return False
        self.work.load(folder)  # every rank: weights, optimisers, schedulers, RNG
        progress = json.loads((folder / "progress.json").read_text())
        self.step, self.version = progress["step"], progress["version"]
        self.sent_through = self.step
        self.prompts.load_state_dict(progress["prompts"])
        log.info("job %s resumed from %s", self.ctx.job_id, folder)
        return True
