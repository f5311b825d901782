"""A real optimisation step on a tiny causal LM: rewarded responses become likelier, punished ones rarer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from services.contracts import JobSpec, ScoredTrajectory, Trajectory, VersionSpan
from trainer import algos, policy
from trainer.batch import collate
from trainer.policy import build_models
from trainer.update import logprobs_in_chunks, train_step

PROMPT = [1, 2, 3, 4]
GOOD, BAD = [10, 11, 12, 13, 14], [20, 21, 22]
GOOD_MASK = [1, 1, 0, 0, 1]  # two inserted tokens in the middle (a retrieved passage)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-policy")
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def scored(response: list[int], mask: list[int], reward: float, uid: str) -> ScoredTrajectory:
    trajectory = Trajectory(
        job_id="j", request_id="r", prompt_uid=uid, prompt_ids=np.array(PROMPT), response_ids=np.array(response),
        loss_mask=np.array(mask, dtype=np.uint8), logprobs=np.zeros(len(response)),
        version_spans=[VersionSpan(start=0, end=len(response), version=0)],
    )  # fmt: skip
    return ScoredTrajectory(trajectory=trajectory, reward=reward)


def spec_for(algorithm: str) -> JobSpec:
    overrides = {
        "model": "tiny",
        "algorithm": {
            "actor_lr": 3e-3, "actor_warmup_ratio": 0.0, "prompts_per_step": 2, "mini_batch_size": 4,
            "micro_batch_size": 2, "group_size": 2,
            **({"critic_lr": 1e-2, "critic_warmup_ratio": 0.0} if algorithm == "ppo" else {}),
        },
        "schedule": {"total_steps": 10},
    }  # fmt: skip
    return JobSpec.from_preset(f"paper-{algorithm}", overrides)


def model_token_logprob(models, batch) -> torch.Tensor:
    logprobs = logprobs_in_chunks(models.policy, batch, 1.0, 8)
    return (logprobs * batch.loss_mask).sum(dim=1)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_training_moves_probability_towards_the_rewarded_response(model_dir: Path, algorithm: str) -> None:
    torch.manual_seed(0)
    spec = spec_for(algorithm)
    models = build_models(spec, str(model_dir), torch.device("cpu"))
    items = [
        scored(GOOD, GOOD_MASK, 1.0, "src-a:1"), scored(BAD, [1, 1, 1], 0.0, "src-a:1"),
        scored(GOOD, GOOD_MASK, 1.0, "src-b:1"), scored(BAD, [1, 1, 1], 0.0, "src-b:1"),
    ]  # fmt: skip
    batch = collate(items, pad_id=0, policy_version=0)
    before = model_token_logprob(models, batch)
    reference_before = logprobs_in_chunks(models.reference, batch, 1.0, 8)
    for _ in range(5):
        stats = train_step(spec.algorithm, batch, models)
    after = model_token_logprob(models, batch)
    assert after[0] > before[0] and after[2] > before[2], "the rewarded response did not become likelier"
    assert after[1] < before[1] and after[3] < before[3], "the punished response did not become rarer"
    assert torch.equal(logprobs_in_chunks(models.reference, batch, 1.0, 8), reference_before), "reference moved"
    assert np.isfinite(list(stats.values())).all()
    expected = {"policy_loss", "entropy", "clip_fraction", "approx_kl", "grad_norm", "lr"}
    expected |= {"value_loss", "kl_in_reward"} if algorithm == "ppo" else {"kl"}
    assert expected <= set(stats), set(stats)


def test_compacted_length_sorted_micro_batches_give_the_logprobs_of_one_full_width_forward(model_dir: Path) -> None:
    spec = spec_for("grpo")
    models = build_models(spec, str(model_dir), torch.device("cpu"))
    rng = np.random.default_rng(0)
    items = []
    for row in range(5):  # prompts of 2-9 tokens, responses of 1-19: every micro-batch has its own padding
        prompt, response = rng.integers(1, 32, rng.integers(2, 10)), rng.integers(1, 32, rng.integers(1, 20))
        trajectory = Trajectory(
            job_id="j", request_id=f"r{row}", prompt_uid="u", prompt_ids=prompt, response_ids=response,
            loss_mask=np.ones(response.size, dtype=np.uint8), logprobs=np.zeros(response.size),
            version_spans=[VersionSpan(start=0, end=response.size, version=0)],
        )  # fmt: skip
        items.append(ScoredTrajectory(trajectory=trajectory, reward=0.0))
    batch = collate(items, pad_id=0, policy_version=0)
    with torch.no_grad():
        logits = models.policy(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits
        whole = algos.response_logprobs(logits, batch.input_ids, batch.response_len) * batch.response_mask
    chunked = logprobs_in_chunks(models.policy, batch, 1.0, 2)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked * batch.response_mask, whole, rtol=1e-5, atol=1e-5)
    shortest = batch.select(batch.lengths().argsort()[:2]).compact()
    assert shortest.input_ids.shape[1] < batch.input_ids.shape[1], "nothing was trimmed"


# The reference's update counts (PeterGriffinJin/Search-R1, train_grpo.sh / train_ppo.sh): 512 prompts per step,
# ppo_mini_batch_size=256 trajectories; GRPO samples n_agent=5 per prompt (2,560 trajectories: 10 optimiser steps),
# PPO one (512: 2 steps).
REFERENCE_UPDATES = {"grpo": 10, "ppo": 2}


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_paper_presets_make_the_reference_count_of_optimizer_steps(model_dir: Path, algorithm: str) -> None:
    algo = JobSpec.from_preset(f"paper-{algorithm}", {"model": "tiny"}).algorithm
    trajectories = algo.prompts_per_step * algo.group_size
    assert (trajectories, trajectories // algo.mini_batch_size) == (512 * algo.group_size, REFERENCE_UPDATES[algorithm])
    # The same shape scaled down 64 times (8 prompts, mini-batches of 4 and micro-batches of 1 trajectory) on
    # the tiny model, counting the optimiser's steps.
    small = {"prompts_per_step": 8, "mini_batch_size": algo.mini_batch_size // 64, "micro_batch_size": 1}
    spec = JobSpec.from_preset(f"paper-{algorithm}", {"model": "tiny", "algorithm": small})
    models = build_models(spec, str(model_dir), torch.device("cpu"))
    steps = {"policy": 0, "critic": 0}
    optimizers = {"policy": models.optimizer, "critic": models.critic_optimizer}
    for name, optimizer in optimizers.items():
        if optimizer is not None:
            optimizer.register_step_post_hook(lambda *_, name=name: steps.__setitem__(name, steps[name] + 1))
    good, bad = (GOOD, GOOD_MASK, 1.0), (BAD, [1, 1, 1], 0.0)
    items = [scored(*(good if row % 2 else bad), f"q:{row // algo.group_size}") for row in range(trajectories // 64)]
    train_step(spec.algorithm, collate(items, pad_id=0, policy_version=0), models)
    assert steps == {
        "policy": REFERENCE_UPDATES[algorithm],
        "critic": REFERENCE_UPDATES[algorithm] if algorithm == "ppo" else 0,
    }


def grpo_batch():
    items = [
        scored(GOOD, GOOD_MASK, 1.0, "src-a:1"), scored(BAD, [1, 1, 1], 0.0, "src-a:1"),
        scored(GOOD, GOOD_MASK, 1.0, "src-b:1"), scored(BAD, [1, 1, 1], 0.0, "src-b:1"),
    ]  # fmt: skip
    return collate(items, pad_id=0, policy_version=0)


def test_one_update_on_the_whole_batch_takes_old_logprobs_from_its_own_forward(model_dir: Path) -> None:
    """GRPO, one epoch, one mini-batch: the update skips the separate old-logprob pass; the step must equal the one
    made with that pass (the policy has not moved between the two)."""
    from trainer import update

    spec = spec_for("grpo")
    assert spec.algorithm.mini_batch_size == len(grpo_batch()) and spec.algorithm.epochs == 1
    torch.manual_seed(0)
    single = build_models(spec, str(model_dir), torch.device("cpu"))
    torch.manual_seed(0)
    two_pass = build_models(spec, str(model_dir), torch.device("cpu"))
    batch = grpo_batch()
    stats = train_step(spec.algorithm, batch, single)
    old = logprobs_in_chunks(two_pass.policy, batch, 1.0, 2)
    ref = logprobs_in_chunks(two_pass.reference, batch, 1.0, 2)
    advantages, *_ = update.advantages_for(spec.algorithm, batch, two_pass, old, ref, 2)
    inputs = update.UpdateInputs(spec.algorithm, batch, two_pass, 1.0, update.SINGLE, advantages, old, ref)
    update._update_minibatch(inputs, torch.arange(len(batch)), update.StepStats())
    for (name, a), (_, b) in zip(single.policy.named_parameters(), two_pass.policy.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert stats["clip_fraction"] == 0.0 and abs(stats["approx_kl"]) < 1e-9, "the ratio is 1 on the first update"
    assert "behaviour_kl" in stats


def bf16_spec() -> JobSpec:
    return spec_for("grpo").model_copy(update={"resources": JobSpec.parse(
        {"model": "m", "algorithm": {"name": "grpo"}, "data": {"train": [{"path": "x"}]},
         "resources": {"learner_cpu_bf16": True}}).resources})  # fmt: skip


def test_bf16_autocast_runs_the_update_in_bf16_and_keeps_fp32_weights(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy, "cpu_computes_bf16", lambda: True)  # the tiny model's update is quick even emulated
    spec = bf16_spec()
    models = build_models(spec, str(model_dir), torch.device("cpu"))
    assert models.autocast_dtype is torch.bfloat16
    batch = grpo_batch()
    before = model_token_logprob(models, batch)
    seen: list[torch.dtype] = []
    layer = models.policy.model.layers[0].mlp.down_proj
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    for _ in range(5):
        stats = train_step(spec.algorithm, batch, models)
    handle.remove()
    after = model_token_logprob(models, batch)
    assert seen and all(dtype is torch.bfloat16 for dtype in seen), "the update ran in bf16"
    assert all(p.dtype is torch.float32 for p in models.policy.parameters())
    assert after[0] > before[0] and after[1] < before[1], "the rewarded response became likelier in bf16 too"
    assert np.isfinite(list(stats.values())).all()


def test_bf16_is_not_emulated_where_the_cpu_lacks_it(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(policy, "cpu_computes_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="trainer.policy"):
        models = build_models(bf16_spec(), str(model_dir), torch.device("cpu"))
    assert models.autocast_dtype is None
    assert "neither AVX512-BF16 nor AMX" in caplog.text


def uniform_skipping_spec(mini_batch_size: int = 4) -> JobSpec:
    """GRPO without KL or entropy terms, so a group of equal rewards contributes exactly no gradient."""
    algo = {"skip_uniform_groups": True, "kl_coef": 0.0, "entropy_coef": 0.0, "mini_batch_size": mini_batch_size,
            "micro_batch_size": min(2, mini_batch_size)}  # fmt: skip
    return spec_for("grpo").model_copy(update={"algorithm": spec_for("grpo").algorithm.model_copy(update=algo)})


def test_skipping_uniform_groups_makes_the_update_of_the_varied_groups_alone(model_dir: Path) -> None:
    """Were the wrong group kept, its advantages would be 0 and the policy would not move like the varied group's."""
    spec = uniform_skipping_spec()
    varied = [scored(GOOD, GOOD_MASK, 1.0, "src-a:1"), scored(BAD, [1, 1, 1], 0.0, "src-a:1")]
    uniform = [scored(GOOD, GOOD_MASK, 1.0, "src-b:1"), scored(BAD, [1, 1, 1], 1.0, "src-b:1")]
    torch.manual_seed(0)
    skipping = build_models(spec, str(model_dir), torch.device("cpu"))
    torch.manual_seed(0)
    alone = build_models(spec, str(model_dir), torch.device("cpu"))
    stats = train_step(spec.algorithm, collate(uniform + varied, pad_id=0, policy_version=0), skipping)
    train_step(spec.algorithm, collate(varied, pad_id=0, policy_version=0), alone)
    assert stats["trained_trajectories"] == 2.0
    for (name, a), (_, b) in zip(skipping.policy.named_parameters(), alone.policy.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)


def test_skipping_keeps_the_count_of_optimiser_steps_and_skips_a_step_with_nothing_to_learn(model_dir: Path) -> None:
    spec = uniform_skipping_spec(mini_batch_size=2)  # 4 trajectories: two optimiser steps per training step
    models = build_models(spec, str(model_dir), torch.device("cpu"))
    steps: list[int] = []
    models.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    half = [scored(GOOD, GOOD_MASK, 1.0, "src-a:1"), scored(BAD, [1, 1, 1], 0.0, "src-a:1"),
            scored(GOOD, GOOD_MASK, 0.0, "src-b:1"), scored(BAD, [1, 1, 1], 0.0, "src-b:1")]  # fmt: skip
    assert train_step(spec.algorithm, collate(half, pad_id=0, policy_version=0), models)["trained_trajectories"] == 2.0
    assert len(steps) == 2, "the two kept rows were split over the step's two optimiser steps"
    before = [p.detach().clone() for p in models.policy.parameters()]
    lr_before = models.optimizer.param_groups[0]["lr"]
    alike = [scored(GOOD, GOOD_MASK, 1.0, "src-c:1"), scored(BAD, [1, 1, 1], 1.0, "src-c:1")]
    stats = train_step(spec.algorithm, collate(alike, pad_id=0, policy_version=0), models)
    assert stats["trained_trajectories"] == 0.0 and stats["lr"] == lr_before and len(steps) == 2
    assert all(torch.equal(a, b) for a, b in zip(before, models.policy.parameters(), strict=True))
    assert models.scheduler.last_epoch == 2, "the learning-rate schedule still counts the step"
