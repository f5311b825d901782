"""One policy-optimisation step on a batch of scored trajectories: advantages, then PPO-clipped updates.

GRPO: group-normalised outcome advantages, KL to the reference as a loss. PPO: KL (k1) in the token rewards,
GAE with the critic's values, clipped value loss. Both: the loss mask keeps inserted tokens out of the policy
loss, the entropy bonus and the KL; mini-batches with gradient accumulation over micro-batches; grad clipping.

Micro-batches hold the rows of a prompt together (longest first) and drop the columns that are padding in all their
rows; a prompt that several rows repeat is computed once (`trainer.prefix`), and logits are computed for response
positions only: padding and prompts cost no vocabulary projection.
On several ranks every rank holds the whole batch and computes its share of each mini-batch (`Ranks`); FSDP
averages the ranks' gradients, so each rank's loss is scaled by the world size and normalised by the token count
of the whole mini-batch: the update is the one a single rank makes on the whole batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from services.contracts import GRPOConfig, PPOConfig
from trainer import algos
from trainer.batch import TrainingBatch
from trainer.prefix import prompt_groups_first, shared_prompt_logits
from trainer.ranks import SINGLE, Ranks


@dataclass
class Models:
    policy: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    reference: nn.Module | None = None
    critic: nn.Module | None = None  # a causal LM trunk with a scalar value head (PPO)
    critic_optimizer: torch.optim.Optimizer | None = None
    critic_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    # Forward and backward passes run under autocast to this dtype (fp32 weights and optimiser): bf16 on a CPU
    # with AVX512-BF16 or AMX roughly halves the update's time (`resources.learner_cpu_bf16`).
    autocast_dtype: torch.dtype | None = None

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device = next(self.policy.parameters()).device.type
        return torch.autocast(device_type=device, dtype=self.autocast_dtype)


class StepStats:
    """Running means of named statistics (one value per mini-batch)."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: float | Tensor) -> None:
        number = float(value.detach()) if isinstance(value, Tensor) else float(value)
        self._sums[name] = self._sums.get(name, 0.0) + number
        self._counts[name] = self._counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {name: total / self._counts[name] for name, total in self._sums.items()}


def forward_logits(model: nn.Module, batch: TrainingBatch) -> Tensor:
    """Logits of the positions that predict the response tokens and of the last one: `(B, R + 1, vocab)`.
    Prompts that several rows repeat are run once (`trainer.prefix`)."""
    shared = shared_prompt_logits(model, batch)
    if shared is not None:
        return shared
    output = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
        logits_to_keep=batch.response_len + 1,
    )  # fmt: skip
    return output.logits


def pad_columns(values: Tensor, width: int) -> Tensor:
    """`(b, r)` values of a compacted micro-batch padded with zeros back to the batch's `width` response columns."""
    return nn.functional.pad(values, (0, width - values.shape[1]))


def sequence_logprobs(model: nn.Module, batch: TrainingBatch, temperature: float) -> Tensor:
    return algos.response_logprobs(forward_logits(model, batch), batch.input_ids, batch.response_len, temperature)


def rows_in_chunks(
    compute: Callable[[TrainingBatch], Tensor], batch: TrainingBatch, chunk: int, ranks: Ranks = SINGLE
) -> Tensor:
    """`compute` (`(b, r)` values of a compacted batch) over every row of `batch`, `chunk` rows at a time, each
    rank on its share; `(B, R)` values of all rows on every rank."""
    order = prompt_groups_first(batch, torch.arange(len(batch)))
    parts: list[Tensor] = []
    for index in ranks.micro_batches(order, chunk):
        out = compute(batch.select(index if index is not None else [0]).compact())  # out of rows: still join FSDP
        parts.append(
            pad_columns(out, batch.response_len) if index is not None else out.new_zeros(0, batch.response_len)
        )
    in_order = ranks.gather_rows(torch.cat(parts), len(batch))
    result = torch.empty_like(in_order)
    result[order.to(in_order.device)] = in_order
    return result


@torch.no_grad()
def logprobs_in_chunks(
    model: nn.Module, batch: TrainingBatch, temperature: float, chunk: int, ranks: Ranks = SINGLE
) -> Tensor:
    model.eval()
    return rows_in_chunks(lambda part: sequence_logprobs(model, part, temperature), batch, chunk, ranks)


def critic_values(critic: nn.Module, batch: TrainingBatch) -> Tensor:
    """Values of the response tokens: the value head's output at the position that predicts each token."""
    values = critic(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    r = batch.response_len
    return values[:, -r - 1 : -1]


def advantages_for(
    config: PPOConfig | GRPOConfig,
    batch: TrainingBatch,
    models: Models,
    logprobs: Tensor | None,
    ref_logprobs: Tensor | None,
    chunk: int,
    ranks: Ranks = SINGLE,
) -> tuple[Tensor, Tensor | None, Tensor | None, dict[str, float]]:
    """(advantages, returns, old values, stats) for the whole batch, before any update."""
    stats: dict[str, float] = {}
    response_mask, loss_mask = batch.response_mask, batch.loss_mask
    if isinstance(config, GRPOConfig):
        per_sequence = algos.grpo_advantages(batch.scores, batch.prompt_uids, eps=config.std_eps)
        return algos.broadcast_to_tokens(per_sequence, response_mask), None, None, stats
    token_rewards = algos.terminal_token_rewards(batch.scores, response_mask)
    if config.kl_in_reward and ref_logprobs is not None:
        assert logprobs is not None, "PPO's KL penalty needs the old log-probabilities"
        token_rewards, kl = algos.apply_kl_penalty(
            token_rewards, logprobs, ref_logprobs, loss_mask, config.kl_coef, config.kl_estimator
        )
        stats["kl_in_reward"] = float(algos.masked_mean(kl, loss_mask))
    assert models.critic is not None, "PPO needs a critic"
    critic = models.critic
    with torch.no_grad():
        critic.eval()
        old_values = rows_in_chunks(lambda part: critic_values(critic, part), batch, chunk, ranks)
    advantages, returns = algos.compute_gae(token_rewards, old_values, response_mask, config.gamma, config.lam)
    return advantages, returns, old_values, stats


def train_step(
    config: PPOConfig | GRPOConfig,
    batch: TrainingBatch,
    models: Models,
    temperature: float = 1.0,
    ranks: Ranks = SINGLE,
) -> dict[str, float]:
    """Advantages for `batch`, then `epochs` passes of mini-batch updates. Returns mean statistics (the same on
    every rank). `mini_batch_size` and `micro_batch_size` count trajectories, the micro-batch over all ranks."""
    with models.autocast():
        return _train_step(config, batch, models, temperature, ranks)


def _train_step(
    config: PPOConfig | GRPOConfig, batch: TrainingBatch, models: Models, temperature: float, ranks: Ranks
) -> dict[str, float]:
    chunk = micro_per_rank(config, ranks)
    mini = min(config.mini_batch_size, len(batch))
    if isinstance(config, GRPOConfig) and config.skip_uniform_groups:
        optimiser_steps = math.ceil(len(batch) / mini)
        batch = batch.select(algos.varied_groups(batch.scores, batch.prompt_uids))
        if len(batch) == 0:
            return _no_update(models)
        mini = math.ceil(len(batch) / optimiser_steps)
    # One GRPO update on the whole batch: the policy has not moved when its loss is computed, so the update's own
    # forward pass gives the old log-probabilities (ratio 1) and a separate pass would repeat it.
    single_pass = isinstance(config, GRPOConfig) and config.epochs == 1 and mini == len(batch)
    old_logprobs = None if single_pass else logprobs_in_chunks(models.policy, batch, temperature, chunk, ranks)
    ref_logprobs = (
        logprobs_in_chunks(models.reference, batch, temperature, chunk, ranks) if models.reference is not None else None
    )
    advantages, returns, old_values, extra = advantages_for(
        config, batch, models, old_logprobs, ref_logprobs, chunk, ranks
    )
    step = UpdateInputs(config, batch, models, temperature, ranks, advantages, old_logprobs, ref_logprobs, returns,
                        old_values)  # fmt: skip
    stats = StepStats()
    for name, value in extra.items():
        stats.add(name, value)
    if old_logprobs is not None:
        stats.add("behaviour_kl", algos.masked_mean(batch.behaviour_logprobs - old_logprobs, batch.loss_mask))
    for _ in range(config.epochs):
        order = ranks.broadcast(torch.randperm(len(batch)))  # rank 0's shuffle: every rank takes the same rows
        for start in range(0, len(batch), mini):
            rows = order[start : start + mini]
            _update_minibatch(step, rows, stats)
    trained = {"trained_trajectories": float(len(batch)), "trained_tokens": float(batch.attention_mask.sum())}
    return _end_step(models, {**stats.means(), **trained})


def _no_update(models: Models) -> dict[str, float]:
    """A GRPO step whose groups all scored alike: nothing to learn, no optimiser step; the schedule moves on."""
    return _end_step(models, {"trained_trajectories": 0.0, "trained_tokens": 0.0, "policy_loss": 0.0, "grad_norm": 0.0})


def _end_step(models: Models, result: dict[str, float]) -> dict[str, float]:
    result["lr"] = models.optimizer.param_groups[0]["lr"]
    models.scheduler.step()
    if models.critic_scheduler is not None:
        models.critic_scheduler.step()
    return result


def micro_per_rank(config: PPOConfig | GRPOConfig, ranks: Ranks) -> int:
    """Rows of one rank's forward/backward: the micro-batch is shared by the ranks, as the reference's."""
    return max(1, config.micro_batch_size // ranks.world)


@dataclass(frozen=True)
class UpdateInputs:
    """What every mini-batch update of one training step reads: the step's batch and models and what was computed
    on the whole batch before any update. `old_logprobs` None: the policy has not moved since sampling-time
    scoring, so each micro-batch's own (detached) log-probabilities are the old ones."""

    config: PPOConfig | GRPOConfig
    batch: TrainingBatch
    models: Models
    temperature: float
    ranks: Ranks
    advantages: Tensor
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    returns: Tensor | None = None  # PPO
    old_values: Tensor | None = None  # PPO


def _update_minibatch(step: UpdateInputs, rows: Tensor, stats: StepStats) -> None:
    """One optimiser step on `rows` of the step's batch."""
    config, batch, models, ranks, temperature = step.config, step.batch, step.models, step.ranks, step.temperature
    old_logprobs, ref_logprobs, advantages = step.old_logprobs, step.ref_logprobs, step.advantages
    policy = models.policy
    policy.train()
    models.optimizer.zero_grad(set_to_none=True)
    tokens = float(batch.loss_mask[rows].sum().clamp(min=1))  # every micro-batch divides by the mini-batch's count
    kl_loss = ref_logprobs is not None and not config.kl_in_reward
    names = ("policy_loss", "entropy", "clip_fraction", "approx_kl", *(("kl",) if kl_loss else ()),
             *(("behaviour_kl",) if old_logprobs is None else ()))  # fmt: skip
    sums = dict.fromkeys(names, 0.0)
    for micro in ranks.micro_batches(prompt_groups_first(batch, rows), micro_per_rank(config, ranks)):
        index = micro if micro is not None else rows[:1]  # a rank out of rows still joins FSDP's collectives
        weight = float(ranks.world) if micro is not None else 0.0  # undoes FSDP's mean over ranks
        part = batch.select(index).compact()
        r = part.response_len
        share = float(part.loss_mask.sum()) / tokens
        logits = forward_logits(policy, part)
        logprobs = algos.response_logprobs(logits, part.input_ids, r, temperature)
        old = logprobs.detach() if old_logprobs is None else old_logprobs[index, :r]
        weights = algos.behaviour_weights(
            old, part.behaviour_logprobs, part.staleness, part.loss_mask, config.behaviour_weight_cap
        )
        out = algos.ppo_policy_loss(
            logprobs, old, advantages[index, :r], part.loss_mask, config.clip_eps, normalizer=tokens,
            token_weights=weights,
        )  # fmt: skip
        # Without an entropy bonus the entropy is only reported: no graph is kept for its vocabulary-sized tensors.
        with torch.set_grad_enabled(config.entropy_coef > 0):
            entropy = algos.masked_entropy(logits[:, -r - 1 : -1], part.loss_mask, temperature, normalizer=tokens)
        loss = out.loss - config.entropy_coef * entropy
        if kl_loss:
            assert ref_logprobs is not None
            kl = algos.kl_loss(
                logprobs, ref_logprobs[index, :r], part.loss_mask, config.kl_estimator, normalizer=tokens
            )
            loss = loss + config.kl_coef * kl
        (loss * weight).backward()
        if micro is None:
            continue
        if kl_loss:
            sums["kl"] += float(kl.detach())
        sums["policy_loss"] += float(out.loss.detach())
        sums["entropy"] += float(entropy.detach())
        sums["clip_fraction"] += float(out.clip_fraction) * share
        sums["approx_kl"] += float(out.approx_kl) * share
        if old_logprobs is None:
            sums["behaviour_kl"] += float(algos.masked_mean(part.behaviour_logprobs - old, part.loss_mask)) * share
    for name, value in ranks.sum(sums).items():
        stats.add(name, value)
    stats.add("grad_norm", clip_gradients(policy, config.grad_clip))
    models.optimizer.step()
    if isinstance(config, PPOConfig) and models.critic is not None:
        _update_critic(config, step, rows, stats)


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the gradients' global norm (over all ranks' shards); returns the norm before clipping."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def _update_critic(config: PPOConfig, step: UpdateInputs, rows: Tensor, stats: StepStats) -> None:
    batch, models, ranks, returns, old_values = step.batch, step.models, step.ranks, step.returns, step.old_values
    critic = models.critic
    assert critic is not None and models.critic_optimizer is not None
    assert returns is not None and old_values is not None
    critic.train()
    models.critic_optimizer.zero_grad(set_to_none=True)
    tokens = float(batch.response_mask[rows].sum().clamp(min=1))
    value_loss = 0.0
    for micro in ranks.micro_batches(prompt_groups_first(batch, rows), micro_per_rank(config, ranks)):
        index = micro if micro is not None else rows[:1]
        part = batch.select(index).compact()
        r = part.response_len
        values = critic_values(critic, part)
        out = algos.clipped_value_loss(
            values, old_values[index, :r], returns[index, :r], part.response_mask, config.value_clip, normalizer=tokens
        )
        (out.loss * (float(ranks.world) if micro is not None else 0.0)).backward()
        if micro is not None:
            value_loss += float(out.loss.detach())
    stats.add("value_loss", ranks.sum({"value_loss": value_loss})["value_loss"])
    clip_gradients(critic, config.grad_clip)
    models.critic_optimizer.step()
