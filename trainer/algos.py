"""The learner's algorithms as pure tensor functions: masked statistics, GAE, GRPO, PPO losses, KL, entropy.

Conventions (every function here follows them):
- Per-token tensors have shape `(batch, response_len)`: one row per trajectory, response tokens only, right-padded.
- Two masks, both `(batch, response_len)`, bool or 0/1 of any dtype:
  - `response_mask`: 1 on every real response token, model-generated *and* environment-inserted (retrieved
    passages, corrective messages); 0 on padding. The critic, the value loss and GAE use it.
  - `loss_mask`: 1 only on model-generated tokens; 0 on inserted tokens and padding. The policy loss, the entropy
    bonus and every KL term (in the reward or as a loss) use it. This is Search-R1's retrieved-token masking.
- A masked-out position never influences a result, even when it holds inf or nan: reductions select with
  `torch.where` (never multiply by the mask, since `nan * 0 = nan`) and log-ratios are masked before `exp`.
- Losses are token means over the masked tokens of the batch ("token-mean"). Pass `normalizer` (a token count,
  e.g. of the whole mini-batch across micro-batches and ranks) to divide by something other than this batch's count.
- Statistics returned for logging are detached.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]

K3_CLAMP = 10.0  # the low-variance KL estimate is clamped to [-10, 10], as the reference does
_LOG_RATIO_CLAMP = 20.0  # exp() of a larger log-ratio overflows in half precision; k3 clamps before exp


# --------------------------------------------------------------------------------------------------------------
# Masked statistics


def _mask_like(mask: Tensor, values: Tensor) -> Tensor:
    """`mask` as a bool tensor on `values`' device; the shapes must match exactly (no silent broadcasting)."""
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match values shape {tuple(values.shape)}")
    return mask.to(device=values.device).bool()


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `values` where `mask` is set (over `dim`, or everything)."""
    selected = torch.where(_mask_like(mask, values), values, torch.zeros_like(values))
    return selected.sum() if dim is None else selected.sum(dim)


def masked_count(mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of set mask entries (over `dim`, or everything) as a float tensor."""
    mask = mask.bool().float()
    return mask.sum() if dim is None else mask.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` where `mask` is set; 0 where nothing is selected (never nan)."""
    total = masked_sum(values, mask, dim)
    count = masked_count(_mask_like(mask, values), dim).to(total.dtype)
    return total / count.clamp(min=1.0)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the selected entries; Bessel-corrected when `unbiased` and at least 2 entries are selected."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if not unbiased:
        return var
    count = masked_count(mask).to(var.dtype)
    return torch.where(count >= 2, var * count / (count - 1).clamp(min=1.0), var)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """`(x - mean) / sqrt(var + eps)` with mean and (unbiased) variance over the selected entries.

    With `shift_mean=False` the mean is added back (only the scale changes). Unselected entries become 0.
    """
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(_mask_like(mask, values), whitened, torch.zeros_like(whitened))


def aggregate_loss(per_token: Tensor, mask: Tensor, normalizer: float | Tensor | None = None) -> Tensor:
    """Reduce a per-token loss to a scalar, the token mean: the sum over selected tokens / `normalizer` (default:
    the number of selected tokens). Every token weighs the same, so long trajectories weigh more; this is the
    reference's choice."""
    total = masked_sum(per_token, mask)
    denominator = masked_count(mask) if normalizer is None else normalizer
    return total / torch.as_tensor(denominator, dtype=total.dtype, device=total.device).clamp(min=1.0)


# --------------------------------------------------------------------------------------------------------------
# Log-probabilities and entropy


def token_logprobs(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(label) under softmax(logits / temperature), in float32.

    `logits` is `(..., vocab)` already aligned with `labels` `(...)`: position t's logits score label t. Use the
    same temperature the rollout sampled with, or the ratio against the behaviour logprobs is off.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not align with labels {tuple(labels.shape)}")
    scaled = logits.float() / temperature
    picked = scaled.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def response_logprobs(logits: Tensor, input_ids: Tensor, response_len: int, temperature: float = 1.0) -> Tensor:
    """Logprobs of the last `response_len` tokens of `input_ids` `(batch, seq)` from a causal LM's `logits`.

    A causal LM's logits at position i predict token i + 1, so the response tokens `input_ids[:, -R:]` are scored
    by `logits[:, -R-1:-1]`.
    """
    seq_len = input_ids.shape[-1]
    if not 0 < response_len < seq_len:
        raise ValueError(f"response_len must lie in [1, {seq_len - 1}] for {seq_len} tokens, got {response_len}")
    return token_logprobs(logits[:, -response_len - 1 : -1], input_ids[:, -response_len:], temperature)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-position entropy `(...)` of softmax(logits / temperature) `(..., vocab)`, in float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    probs = log_probs.exp()
    # p log p -> 0 as p -> 0: entries at -inf (p = 0) contribute 0, not nan. Replace log p *before* the product,
    # or the backward of the discarded branch computes 0 * -inf = nan.
    safe_log_probs = torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))
    return -(probs * safe_log_probs).sum(dim=-1)


def masked_entropy(
    logits: Tensor,
    loss_mask: Tensor,
    temperature: float = 1.0,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Mean entropy over model-generated tokens (`loss_mask`); inserted tokens and padding do not count."""
    return aggregate_loss(entropy_from_logits(logits, temperature), loss_mask, normalizer)


# --------------------------------------------------------------------------------------------------------------
# KL to the reference policy


def kl_estimate(
    logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1", mask: Tensor | None = None
) -> Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' logprobs.

    With `d = logprobs - ref_logprobs` (the tokens were sampled from the policy):
    - k1 = d (unbiased, high variance, can be negative);
    - k2 = d**2 / 2 (biased, always >= 0);
    - k3 = exp(-d) - 1 + d (unbiased, >= 0, low variance; Search-R1's `low_var_kl`), clamped to [-10, 10],
      with -d clamped to [-20, 20] before the exp.
    Positions outside `mask` are 0.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ")
    diff = logprobs - ref_logprobs
    if mask is not None:
        diff = torch.where(_mask_like(mask, diff), diff, torch.zeros_like(diff))
    if estimator == "k1":
        kl = diff
    elif estimator == "k2":
        kl = 0.5 * diff.square()
    elif estimator == "k3":
        log_ratio = (-diff).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        kl = (log_ratio.exp() - log_ratio - 1.0).clamp(-K3_CLAMP, K3_CLAMP)
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose 'k1', 'k2' or 'k3'")
    if mask is not None:
        kl = torch.where(_mask_like(mask, kl), kl, torch.zeros_like(kl))
    return kl


def apply_kl_penalty(
    token_rewards: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    loss_mask: Tensor,
    coef: float,
    estimator: KLEstimator = "k1",
) -> tuple[Tensor, Tensor]:
    """KL in the reward (PPO's default): `rewards - coef * kl` per token, on model-generated tokens only.

    Returns `(penalised token rewards, per-token kl)`; the kl is 0 on inserted tokens and padding (the reference
    masks its KL penalty with the info mask too, since inserted tokens were never sampled from the policy).
    """
    kl = kl_estimate(logprobs, ref_logprobs, estimator, mask=loss_mask)
    return token_rewards - coef * kl, kl


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    loss_mask: Tensor,
    estimator: KLEstimator = "k3",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """KL as a loss term (GRPO's default: k3): the aggregated per-token estimate over model-generated tokens."""
    return aggregate_loss(kl_estimate(logprobs, ref_logprobs, estimator, mask=loss_mask), loss_mask, normalizer)


# --------------------------------------------------------------------------------------------------------------
# Rewards and advantages


def terminal_token_rewards(scores: Tensor, response_mask: Tensor) -> Tensor:
    """Place each trajectory's outcome score on its last real response token; 0 elsewhere.

    `scores` is `(batch,)`. The last token is the last set entry of `response_mask` (in practice the model's
    final token, since an episode ends on generation). A row with no response tokens gets all zeros.
    """
    mask = response_mask.bool()
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} do not match batch size {mask.shape[0]}")
    length = mask.shape[-1]
    positions = torch.arange(length, device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=-1)
    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    rewards[rows, last[rows]] = scores[rows]
    return rewards


def compute_gae(
    token_rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    whiten: bool = True,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the response tokens selected by `mask`; returns (advantages, returns).

    Each selected token is one time step: `delta_t = r_t + gamma * V_next - V_t` and
    `A_t = delta_t + gamma * lam * A_next`, where "next" is the next *selected* token, and `V_next = 0` after the
    last one (the episode ends). Unselected positions are skipped (they carry `V_next` and `A_next` through
    unchanged) and get advantage and return 0. `returns = A + V` before whitening (the critic's target);
    with `whiten`, advantages are then whitened over the selected tokens.

    Search-R1 parity: pass the `response_mask`, so inserted tokens are ordinary time steps whose critic values
    take part in the bootstrap chain, and advantages are whitened over all response tokens, exactly as the
    reference (which masks only padding in GAE). The policy loss later reads the advantages of model tokens only.
    Passing the `loss_mask` instead treats each observation as part of the environment transition between two
    model tokens. With gamma = lam = 1 (the default) and zero reward on inserted tokens (the KL penalty is masked
    there) both choices give the same advantages on model tokens before whitening: A_t = sum_{k>=t} r_k - V_t.
    """
    if token_rewards.shape != values.shape:
        raise ValueError(f"token_rewards {tuple(token_rewards.shape)} and values {tuple(values.shape)} differ")
    selected = _mask_like(mask, values)
    rewards = torch.where(selected, token_rewards, torch.zeros_like(token_rewards)).float()
    vals = torch.where(selected, values, torch.zeros_like(values)).float()
    batch, length = vals.shape
    advantages = torch.zeros_like(vals)
    next_value = vals.new_zeros(batch)
    next_advantage = vals.new_zeros(batch)
    for t in range(length - 1, -1, -1):
        here = selected[:, t]
        delta = rewards[:, t] + gamma * next_value - vals[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(here, advantage, torch.zeros_like(advantage))
        next_advantage = torch.where(here, advantage, next_advantage)
        next_value = torch.where(here, vals[:, t], next_value)
    returns = torch.where(selected, advantages + vals, torch.zeros_like(vals))
    if whiten:
        advantages = masked_whiten(advantages, selected)
    return advantages, returns


def prompt_groups(prompt_uids: Sequence[Hashable]) -> list[list[int]]:
    """The indices of each prompt uid's samples, in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for index, uid in enumerate(prompt_uids):
        groups.setdefault(uid, []).append(index)
    return list(groups.values())


def varied_groups(scores: Tensor, prompt_uids: Sequence[Hashable]) -> Tensor:
    """Indices (ascending) of the samples whose group (samples of the same prompt uid) holds differing scores."""
    groups = prompt_groups(prompt_uids)
    kept = [i for members in groups if scores[members].max() > scores[members].min() for i in members]
    return torch.tensor(sorted(kept), dtype=torch.long)


def grpo_advantages(
    scores: Tensor,
    prompt_uids: Sequence[Hashable],
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> Tensor:
    """Group-relative advantages: `(r - mean) / (std + eps)` over the samples of the same prompt.

    `scores` is `(batch,)`; `prompt_uids[i]` is sample i's *globally unique* prompt id (e.g. `"<source>:<id>"`).
    Groups are keyed by that id alone, wherever the samples sit in the batch; the reference keyed them by a
    per-source index, so item k of two sources shared a group. `std` is the unbiased (n - 1) standard deviation.
    A group of one sample carries no relative signal and gets advantage 0. `scale_by_std=False` gives the
    mean-centred variant without the division.
    """
    if scores.dim() != 1 or scores.shape[0] != len(prompt_uids):
        raise ValueError(f"scores {tuple(scores.shape)} must be 1-D with one entry per uid ({len(prompt_uids)})")
    scores32 = scores.float()
    advantages = torch.zeros_like(scores32)
    for members in prompt_groups(prompt_uids):
        if len(members) < 2:
            continue
        index = torch.tensor(members, device=scores.device)
        group = scores32[index]
        centred = group - group.mean()
        advantages[index] = centred / (group.std(unbiased=True) + eps) if scale_by_std else centred
    return advantages


def broadcast_to_tokens(sequence_values: Tensor, mask: Tensor) -> Tensor:
    """A per-trajectory value `(batch,)` copied onto every selected token `(batch, len)`; 0 elsewhere."""
    mask = mask.bool()
    expanded = sequence_values.unsqueeze(-1).expand(mask.shape)
    return torch.where(mask.to(expanded.device), expanded, torch.zeros_like(expanded))


# --------------------------------------------------------------------------------------------------------------
# PPO losses


@dataclass(frozen=True)
class PolicyLossOutput:
    """The PPO policy loss (differentiable) and its statistics (detached)."""

    loss: Tensor
    clip_fraction: Tensor  # share of model tokens whose ratio the clip bound (the pessimistic term won)
    approx_kl: Tensor  # mean of (old - new) logprob over model tokens: how far this update has moved
    ratio_mean: Tensor


def policy_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """`exp(logprobs - old_logprobs)` on selected tokens, exactly 1 elsewhere (masked before the exp)."""
    selected = _mask_like(mask, logprobs)
    log_ratio = torch.where(selected, logprobs - old_logprobs, torch.zeros_like(logprobs))
    return log_ratio.exp()


def behaviour_weights(
    proximal_logprobs: Tensor, behaviour_logprobs: Tensor, staleness: Tensor, loss_mask: Tensor, cap: float
) -> Tensor | None:
    """Decoupled PPO's importance weights: `exp(proximal - behaviour)` per token, capped at `cap`, on the rows
    sampled by an older policy (`staleness` > 0), exactly 1 on the others; None when no row is stale, so an
    on-policy batch is trained exactly as without them.

    The proximal policy is the learner's own before this step's update: PPO clips the ratio against it, and the
    weight corrects for the tokens having been sampled by the behaviour policy instead."""
    stale = staleness > 0
    if not bool(stale.any()):
        return None
    selected = _mask_like(loss_mask, proximal_logprobs) & stale[:, None]
    log_weight = torch.where(selected, proximal_logprobs - behaviour_logprobs, torch.zeros_like(proximal_logprobs))
    return log_weight.exp().clamp(max=cap).detach()


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    clip_eps: float = 0.2,
    normalizer: float | Tensor | None = None,
    token_weights: Tensor | None = None,
) -> PolicyLossOutput:
    """The PPO clipped surrogate over model-generated tokens.

    Per token: `ratio = exp(logprobs - old_logprobs)` and `loss = max(-A * ratio, -A * clip(ratio, 1 - eps,
    1 + eps))`, where `old_logprobs` are the learner's (proximal) logprobs before the update, times
    `token_weights` where given (`behaviour_weights`, for stale trajectories). Inserted tokens and padding
    (`loss_mask` 0) contribute nothing to the loss, its gradient or the statistics.
    """
    if not logprobs.shape == old_logprobs.shape == advantages.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
            f"advantages {tuple(advantages.shape)} must have the same shape"
        )
    selected = _mask_like(loss_mask, logprobs)
    adv = torch.where(selected, advantages, torch.zeros_like(advantages)).detach()
    ratio = policy_ratio(logprobs, old_logprobs.detach(), selected)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    loss = aggregate_loss(per_token, selected, normalizer)
    with torch.no_grad():
        log_ratio = torch.where(selected, logprobs - old_logprobs, torch.zeros_like(logprobs))
        stats = PolicyLossOutput(
            loss=loss,
            clip_fraction=masked_mean((clipped > unclipped).float(), selected),
            approx_kl=masked_mean(-log_ratio, selected),
            ratio_mean=masked_mean(ratio, selected),
        )
    return stats


@dataclass(frozen=True)
class ValueLossOutput:
    """The clipped value loss (differentiable) and its statistics (detached)."""

    loss: Tensor
    clip_fraction: Tensor  # share of tokens where the clipped error was the larger one
    value_mean: Tensor


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    clip: float = 0.5,
    normalizer: float | Tensor | None = None,
) -> ValueLossOutput:
    """`0.5 * max((V - R)^2, (V_clip - R)^2)` with `V_clip = V_old + clip(V - V_old, -clip, clip)`.

    Averaged over `response_mask`: the critic learns on every response token, inserted ones included.
    """
    if not values.shape == old_values.shape == returns.shape:
        raise ValueError("values, old_values and returns must have the same shape")
    selected = _mask_like(response_mask, values)
    old = old_values.detach()
    target = returns.detach()
    clipped_values = old + (values - old).clamp(-clip, clip)
    error = (values - target).square()
    clipped_error = (clipped_values - target).square()
    per_token = 0.5 * torch.maximum(error, clipped_error)
    loss = aggregate_loss(per_token, selected, normalizer)
    with torch.no_grad():
        return ValueLossOutput(
            loss=loss,
            clip_fraction=masked_mean((clipped_error > error).float(), selected),
            value_mean=masked_mean(values, selected),
        )


# --------------------------------------------------------------------------------------------------------------
# Learning-rate schedule


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Number of warm-up steps: `floor(warmup_ratio * total_steps)` (0.285 x 1005 -> 286)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(f"warmup_ratio must lie in [0, 1], got {warmup_ratio}")
    return math.floor(warmup_ratio * total_steps)


def warmup_constant_factor(step: int, num_warmup_steps: int) -> float:
    """LR multiplier at optimizer step `step` (0-based): `step / warmup` during warm-up, then 1.

    As the reference (constant schedule with linear warm-up), step 0 has multiplier 0.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < num_warmup_steps:
        return step / num_warmup_steps
    return 1.0


def warmup_constant_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR for `optimizer`: linear warm-up over `warmup_ratio * total_steps` steps, then constant."""
    num_warmup = warmup_steps(total_steps, warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_constant_factor(step, num_warmup))
