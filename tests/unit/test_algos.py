"""Unit tests of trainer.algos against hand-computed values, and the property that masks exclude inserted tokens."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from trainer.algos import (
    aggregate_loss,
    apply_kl_penalty,
    behaviour_weights,
    broadcast_to_tokens,
    clipped_value_loss,
    compute_gae,
    entropy_from_logits,
    grpo_advantages,
    kl_estimate,
    kl_loss,
    masked_entropy,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_ratio,
    ppo_policy_loss,
    response_logprobs,
    terminal_token_rewards,
    token_logprobs,
    warmup_constant_factor,
    warmup_constant_scheduler,
    warmup_steps,
)


def t(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def close(actual: torch.Tensor, expected: object, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Masked statistics


def test_masked_sum_and_mean_ignore_unselected_even_nan() -> None:
    values = t([[1.0, 2.0, float("nan")], [float("inf"), 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.uint8)
    close(masked_sum(values, mask), 8.0)
    close(masked_mean(values, mask), 8.0 / 3.0)
    close(masked_mean(values, mask, dim=-1), [1.5, 5.0])


def test_masked_mean_of_nothing_is_zero_not_nan() -> None:
    close(masked_mean(t([1.0, 2.0]), torch.tensor([False, False])), 0.0)


def test_mask_shape_must_match() -> None:
    with pytest.raises(ValueError, match="mask shape"):
        masked_mean(t([[1.0, 2.0]]), torch.tensor([1, 1]))


def test_masked_var_unbiased_and_biased() -> None:
    values, mask = t([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0])
    # mean 2, squared deviations 1 + 0 + 1 = 2: unbiased 2 / 2 = 1, biased 2 / 3
    close(masked_var(values, mask), 1.0)
    close(masked_var(values, mask, unbiased=False), 2.0 / 3.0)
    close(masked_var(t([4.0, 9.0]), torch.tensor([1, 0])), 0.0)  # one entry: no correction, variance 0


def test_masked_whiten() -> None:
    values, mask = t([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0])
    # mean 2, unbiased std 1 -> -1, 0, 1; the unselected entry becomes 0
    close(masked_whiten(values, mask), [-1.0, 0.0, 1.0, 0.0])
    close(masked_whiten(values, mask, shift_mean=False), [1.0, 2.0, 3.0, 0.0])


def test_aggregate_loss_is_the_token_mean() -> None:
    per_token = t([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    close(aggregate_loss(per_token, mask), 7.0 / 3.0)  # (1 + 2 + 4) / 3 tokens
    close(aggregate_loss(per_token, mask, normalizer=10), 0.7)  # e.g. the whole mini-batch has 10 tokens


# --------------------------------------------------------------------------------------------------------------
# Logprobs and entropy


def test_token_logprobs_with_temperature() -> None:
    logits = t([[0.0, math.log(3.0)]])  # probabilities 1/4, 3/4
    close(token_logprobs(logits, torch.tensor([1])), [math.log(0.75)])
    # temperature 2: logits 0, ln(3)/2 -> p(0) = 1 / (1 + sqrt 3)
    close(token_logprobs(logits, torch.tensor([0]), temperature=2.0), [-math.log(1.0 + math.sqrt(3.0))])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, torch.tensor([0]), temperature=0.0)


def test_response_logprobs_shift_by_one() -> None:
    # vocabulary of 2; position i's logits predict token i + 1
    logits = t([[[0.0, 0.0], [0.0, math.log(3.0)], [math.log(3.0), 0.0], [5.0, 5.0]]])
    input_ids = torch.tensor([[0, 0, 1, 0]])
    # the last two tokens (1, 0) are scored by positions 1 and 2: p = 3/4 and 3/4
    close(response_logprobs(logits, input_ids, response_len=2), [[math.log(0.75), math.log(0.75)]])


def test_entropy_from_logits() -> None:
    logits = t([[0.0, 0.0, float("-inf")], [0.0, math.log(3.0), float("-inf")]])
    # uniform over 2 -> ln 2; (1/4, 3/4) -> -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351; -inf entries add 0, not nan
    close(entropy_from_logits(logits), [math.log(2.0), 0.5623351])
    # temperature 1/2 doubles logits: 0, ln 9 -> (1/10, 9/10)
    expected = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    close(entropy_from_logits(logits[1:], temperature=0.5), [expected])
    # a vocabulary masked with -inf keeps the gradient finite (no 0 * -inf in the backward)
    leaf = logits.clone().requires_grad_(True)
    entropy_from_logits(leaf).sum().backward()
    assert torch.isfinite(leaf.grad).all()


# --------------------------------------------------------------------------------------------------------------
# KL


def test_kl_estimators() -> None:
    logprobs, ref = t([-1.0]), t([-1.5])  # d = logp - ref = 0.5
    close(kl_estimate(logprobs, ref, "k1"), [0.5])
    close(kl_estimate(logprobs, ref, "k2"), [0.125])
    close(kl_estimate(logprobs, ref, "k3"), [math.exp(-0.5) - 1.0 + 0.5])  # 0.1065307
    close(kl_estimate(ref, logprobs, "k3"), [math.exp(0.5) - 1.0 - 0.5])  # 0.1487213
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logprobs, ref, "k4")  # type: ignore[arg-type]


def test_k3_is_clamped_to_ten() -> None:
    # d = -15: exp(15) - 1 - 15 is about 3.3e6 -> 10; d = -60 would overflow without the log-ratio clamp
    close(kl_estimate(t([-16.0, -61.0]), t([-1.0, -1.0]), "k3"), [10.0, 10.0])


def test_kl_penalty_in_reward_skips_inserted_tokens() -> None:
    rewards = t([[0.0, 0.0, 1.0]])
    logprobs, ref = t([[-1.0, -2.0, -1.0]]), t([[-1.5, -9.0, -0.5]])
    loss_mask = torch.tensor([[1, 0, 1]])  # the middle token was inserted by the environment
    penalised, kl = apply_kl_penalty(rewards, logprobs, ref, loss_mask, coef=0.1, estimator="k1")
    close(kl, [[0.5, 0.0, -0.5]])
    close(penalised, [[-0.05, 0.0, 1.05]])


def test_kl_loss_token_mean() -> None:
    logprobs, ref = t([[-1.0, -1.0, 0.0]]), t([[-1.5, -0.5, 7.0]])
    loss_mask = torch.tensor([[1, 1, 0]])
    # k3 of d = 0.5 and d = -0.5: (0.1065307 + 0.1487213) / 2
    close(kl_loss(logprobs, ref, loss_mask), (0.1065307 + 0.1487213) / 2)


# --------------------------------------------------------------------------------------------------------------
# Rewards and advantages


def test_terminal_token_rewards() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    close(terminal_token_rewards(t([1.0, 0.5, 2.0]), mask), [[0.0, 1.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])


def test_gae_hand_computed() -> None:
    rewards, values = t([[0.0, 0.0, 1.0, 0.0]]), t([[0.5, 1.0, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last position is padding: its value must not be bootstrapped
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.5, lam=0.5, whiten=False)
    # t=2: delta = 1 + 0 - 0.5 = 0.5                       A2 = 0.5
    # t=1: delta = 0 + 0.5 * 0.5 - 1 = -0.75               A1 = -0.75 + 0.25 * 0.5 = -0.625
    # t=0: delta = 0 + 0.5 * 1 - 0.5 = 0                   A0 = 0.25 * -0.625 = -0.15625
    close(advantages, [[-0.15625, -0.625, 0.5, 0.0]])
    close(returns, [[0.34375, 0.375, 1.0, 0.0]])


def test_gae_gamma_lambda_one_is_return_minus_value() -> None:
    rewards, values = t([[0.0, 0.0, 1.0]]), t([[0.5, 1.0, 0.5]])
    mask = torch.ones(1, 3)
    advantages, returns = compute_gae(rewards, values, mask, whiten=False)
    close(advantages, [[0.5, 0.0, 0.5]])
    close(returns, [[1.0, 1.0, 1.0]])
    # whitened: mean 1/3, unbiased variance 1/12 -> (A - 1/3) * sqrt(12)
    whitened, _ = compute_gae(rewards, values, mask)
    close(whitened, [[0.5773503, -1.1547005, 0.5773503]], atol=1e-4)


def test_gae_mask_choice_for_inserted_tokens() -> None:
    rewards, values = t([[0.0, 0.0, 1.0]]), t([[0.5, 9.0, 0.5]])
    response_mask = torch.tensor([[1, 1, 1]])
    loss_mask = torch.tensor([[1, 0, 1]])  # token 1 was inserted
    # the reference (response_mask): the inserted token is a time step with its own value
    #   A2 = 0.5; A1 = (0 + 0.5 * 0.5 - 9) + 0.25 * 0.5 = -8.625; A0 = (0 + 0.5 * 9 - 0.5) + 0.25 * -8.625 = 1.84375
    ref_adv, _ = compute_gae(rewards, values, response_mask, gamma=0.5, lam=0.5, whiten=False)
    close(ref_adv, [[1.84375, -8.625, 0.5]])
    # the loss mask skips it: A2 = 0.5; A0 = (0 + 0.5 * 0.5 - 0.5) + 0.25 * 0.5 = -0.125
    skip_adv, _ = compute_gae(rewards, values, loss_mask, gamma=0.5, lam=0.5, whiten=False)
    close(skip_adv, [[-0.125, 0.0, 0.5]])
    # gamma = lam = 1 (the paper's setting): both give R - V on the model's tokens
    ref_one, _ = compute_gae(rewards, values, response_mask, whiten=False)
    skip_one, _ = compute_gae(rewards, values, loss_mask, whiten=False)
    close(ref_one[loss_mask.bool()], [0.5, 0.5])
    close(skip_one[loss_mask.bool()], [0.5, 0.5])


def test_grpo_hand_computed_groups_by_globally_unique_id() -> None:
    scores = t([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    # item 5 of NQ and item 5 of HotpotQA: the reference keyed groups by the per-source index "5" and merged them
    uids = ["nq:5", "nq:5", "hotpotqa:5", "hotpotqa:5", "nq:5", "popqa:9"]
    advantages = grpo_advantages(scores, uids)
    # nq:5 = [1, 0, 0]: mean 1/3, unbiased std sqrt(1/3) -> 1.1547, -0.5774, -0.5774
    # hotpotqa:5 = [1, 0]: mean 1/2, unbiased std sqrt(1/2) -> 0.7071, -0.7071
    # popqa:9 is alone -> 0
    close(advantages, [1.1547005, -0.5773503, 0.7071068, -0.7071068, -0.5773503, 0.0], atol=1e-4)
    # the buggy grouping would put all five "5"s together (mean 0.4, std sqrt(0.3)): 1.0954 for sample 2
    merged = grpo_advantages(scores, ["5", "5", "5", "5", "5", "9"])
    assert merged[2].item() == pytest.approx(0.6 / math.sqrt(0.3), abs=1e-4)
    assert advantages[2].item() != pytest.approx(merged[2].item(), abs=1e-3)


def test_grpo_equal_scores_and_unscaled_variant() -> None:
    close(grpo_advantages(t([1.0, 1.0, 1.0]), ["a", "a", "a"]), [0.0, 0.0, 0.0])
    close(grpo_advantages(t([3.0, 1.0]), ["a", "a"], scale_by_std=False), [1.0, -1.0])
    with pytest.raises(ValueError, match="one entry per uid"):
        grpo_advantages(t([1.0, 2.0]), ["a"])


def test_broadcast_to_tokens() -> None:
    close(broadcast_to_tokens(t([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]])), [[2.0, 2.0, 0.0], [-1.0, 0, 0]])


# --------------------------------------------------------------------------------------------------------------
# PPO policy loss


def _ppo_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ratios = [1.5, 0.5, 1.1, 3.0]
    logprobs = torch.tensor([[math.log(r) for r in ratios]], requires_grad=True)
    old = torch.zeros(1, 4)
    advantages = t([[1.0, 1.0, -1.0, -2.0]])
    loss_mask = torch.tensor([[1, 1, 1, 0]])
    return logprobs, old, advantages, loss_mask


def test_ppo_policy_loss_hand_computed() -> None:
    logprobs, old, advantages, loss_mask = _ppo_case()
    out = ppo_policy_loss(logprobs, old, advantages, loss_mask, clip_eps=0.2)
    # token 0: ratio 1.5, A = 1  -> max(-1.5, -1.2) = -1.2 (clipped)
    # token 1: ratio 0.5, A = 1  -> max(-0.5, -0.8) = -0.5 (unclipped)
    # token 2: ratio 1.1, A = -1 -> max(1.1, 1.1) = 1.1
    # token 3: masked out
    close(out.loss, (-1.2 - 0.5 + 1.1) / 3)
    close(out.clip_fraction, 1.0 / 3.0)
    close(out.approx_kl, -(math.log(1.5) + math.log(0.5) + math.log(1.1)) / 3)  # 0.0641239
    close(out.ratio_mean, (1.5 + 0.5 + 1.1) / 3)
    out.loss.backward()
    # d/dlogp: clipped token 0 -> 0; token 1 -> -A * ratio / 3 = -0.5 / 3; token 2 -> 1.1 / 3; masked -> 0
    close(logprobs.grad, [[0.0, -0.5 / 3, 1.1 / 3, 0.0]])
    assert not out.clip_fraction.requires_grad


def test_behaviour_weights_correct_only_stale_rows_and_are_capped() -> None:
    proximal = t([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
    behaviour = t([[-1.5, -0.5, -9.0], [-3.0, -3.0, -3.0]])
    loss_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert behaviour_weights(proximal, behaviour, torch.tensor([0, 0]), loss_mask, cap=5.0) is None, "on-policy"
    weights = behaviour_weights(proximal, behaviour, torch.tensor([1, 0]), loss_mask, cap=5.0)
    assert weights is not None
    # row 0 is stale: exp(proximal - behaviour) on model tokens (exp(0.5), exp(-1.5)), 1 on the inserted one;
    # row 1 was sampled by the policy it trains: exactly 1, though its logprobs differ (numerics, not policy).
    close(weights, [[math.exp(0.5), math.exp(-1.5), 1.0], [1.0, 1.0, 1.0]])
    capped = behaviour_weights(proximal, behaviour, torch.tensor([1, 2]), loss_mask, cap=5.0)
    assert capped is not None
    close(capped[1], [5.0, 5.0, 5.0])  # exp(2) = 7.39, capped


def test_token_weights_scale_each_tokens_surrogate() -> None:
    logprobs, old, advantages, loss_mask = _ppo_case()
    weights = t([[2.0, 0.5, 1.0, 3.0]])
    out = ppo_policy_loss(logprobs, old, advantages, loss_mask, clip_eps=0.2, token_weights=weights)
    close(out.loss, (-1.2 * 2.0 - 0.5 * 0.5 + 1.1) / 3)  # the masked token's weight changes nothing
    out.loss.backward()
    close(logprobs.grad, [[0.0, -0.5 * 0.5 / 3, 1.1 / 3, 0.0]])


def test_policy_ratio_is_one_on_masked_tokens() -> None:
    ratio = policy_ratio(t([[0.0, 500.0]]), t([[math.log(2.0), -500.0]]), torch.tensor([[1, 0]]))
    close(ratio, [[0.5, 1.0]])


# --------------------------------------------------------------------------------------------------------------
# The loss mask really excludes inserted tokens


def _random_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape, vocab = (3, 6), 11
    return {
        "logits": torch.randn(*shape, vocab, generator=generator),
        "labels": torch.randint(0, vocab, shape, generator=generator),
        "old": -torch.rand(*shape, generator=generator) * 3,
        "ref": -torch.rand(*shape, generator=generator) * 3,
        "adv": torch.randn(*shape, generator=generator),
        # row 0: tokens 2-3 inserted; row 1: token 0 inserted, token 5 padding; row 2: all model tokens
        "mask": torch.tensor([[1, 1, 0, 0, 1, 1], [0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),
    }


def _objectives(batch: dict[str, torch.Tensor], logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    logprobs = token_logprobs(logits, batch["labels"])
    policy = ppo_policy_loss(logprobs, batch["old"], batch["adv"], batch["mask"]).loss
    entropy = masked_entropy(logits, batch["mask"])
    kls = tuple(kl_loss(logprobs, batch["ref"], batch["mask"], estimator=k) for k in ("k1", "k2", "k3"))
    _, kl_tokens = apply_kl_penalty(torch.zeros_like(logprobs), logprobs, batch["ref"], batch["mask"], coef=0.001)
    return (policy, entropy, *kls, kl_tokens.sum())


def _scaled(row: torch.Tensor) -> torch.Tensor:
    return row * 1e3


def _half_masked(row: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.arange(row.shape[-1]) % 2 == 0, row + 30.0, torch.full_like(row, float("-inf")))


def _constant(row: torch.Tensor) -> torch.Tensor:
    return torch.full_like(row, 1e4)


@pytest.mark.parametrize("poison", [_scaled, _half_masked, _constant])
def test_changing_an_inserted_token_changes_nothing(poison: Callable[[torch.Tensor], torch.Tensor]) -> None:
    batch = _random_batch()
    base_logits = batch["logits"].clone().requires_grad_(True)
    before = _objectives(batch, base_logits)
    grads_before = torch.autograd.grad(before[0] + before[1] + before[4], base_logits)[0]

    changed = batch["logits"].clone()
    changed[0, 2] = poison(changed[0, 2])  # an inserted token's logits (hence its logprob and entropy)
    changed[0, 3] *= -5.0
    changed[1, 5] = poison(changed[1, 5])  # a padding position
    # the behaviour / reference logprobs and advantages carried for inserted tokens may hold anything
    batch["old"][0, 2] = 100.0
    batch["ref"][1, 0] = float("nan")
    batch["adv"][0, 3] = float("inf")
    changed.requires_grad_(True)
    after = _objectives(batch, changed)
    grads_after = torch.autograd.grad(after[0] + after[1] + after[4], changed)[0]

    for a, b in zip(before, after, strict=True):
        close(b, a.item())
    mask = batch["mask"].bool()
    close(grads_after[mask], grads_before[mask])
    assert torch.all(grads_after[~mask] == 0)


def test_changing_a_model_token_changes_every_objective() -> None:
    batch = _random_batch()
    before = _objectives(batch, batch["logits"])
    changed = batch["logits"].clone()
    changed[0, 1] = torch.linspace(-3.0, 3.0, changed.shape[-1])  # a model-generated token
    after = _objectives(batch, changed)
    for a, b in zip(before, after, strict=True):
        assert abs(a.item() - b.item()) > 1e-6


# --------------------------------------------------------------------------------------------------------------
# Value loss


def test_clipped_value_loss_hand_computed() -> None:
    values = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    old, returns = t([[0.0, 2.0, 0.0]]), t([[1.0, 0.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    out = clipped_value_loss(values, old, returns, mask, clip=0.5)
    # token 0: V = 1 clipped to 0.5: errors 0 and 0.25 -> 0.25 (the clipped one); token 1: 4 and 4 -> 4
    close(out.loss, 0.5 * (0.25 + 4.0) / 2)
    close(out.clip_fraction, 0.5)
    close(out.value_mean, 1.5)
    out.loss.backward()
    # token 0's loss is held by the clipped value (no gradient); token 1: 0.5 * 2 * (2 - 0) / 2 = 1
    close(values.grad, [[0.0, 1.0, 0.0]])


# --------------------------------------------------------------------------------------------------------------
# Learning-rate schedule


def test_warmup_steps_and_factor() -> None:
    assert warmup_steps(1005, 0.285) == 286  # the paper's actor
    assert warmup_steps(1005, 0.015) == 15  # and critic
    assert warmup_steps(10, 0.0) == 0
    assert warmup_constant_factor(0, 286) == 0.0
    assert warmup_constant_factor(143, 286) == 0.5
    assert warmup_constant_factor(286, 286) == 1.0
    assert warmup_constant_factor(1000, 286) == 1.0
    assert warmup_constant_factor(0, 0) == 1.0
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_steps(10, 1.5)


def test_warmup_constant_scheduler_drives_the_optimizer() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1e-6)
    scheduler = warmup_constant_scheduler(optimizer, total_steps=10, warmup_ratio=0.4)  # 4 warm-up steps
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.0, 0.25e-6, 0.5e-6, 0.75e-6, 1e-6, 1e-6])
