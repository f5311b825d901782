"""`algorithm.gradient_checkpointing` reaches the policy and the critic, and lowers the update's peak memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import Qwen2Config, Qwen2ForCausalLM

from services.contracts import JobSpec
from trainer.policy import build_models
from trainer.update import Models


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-deep")
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def models_for(model_dir: Path, algorithm: str, checkpointing: bool) -> Models:
    overrides = {"model": "tiny", "algorithm": {"gradient_checkpointing": checkpointing}}
    return build_models(JobSpec.from_preset(f"paper-{algorithm}", overrides), str(model_dir), torch.device("cpu"))


def peak_bytes(module: torch.nn.Module, loss: Callable[[], torch.Tensor]) -> int:
    """Peak of the CPU memory allocated during one forward and backward, from the profiler's allocation record
    (each allocation and free counted at the start of the op that made it)."""
    module.train()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss().backward()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def update_peaks(models: Models, ids: torch.Tensor) -> tuple[int, int]:
    """Peak bytes of a policy and of a critic forward and backward on `ids`."""
    policy, critic = models.policy, models.critic
    assert critic is not None
    mask, positions = torch.ones_like(ids), torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    return (
        peak_bytes(policy, lambda: policy(input_ids=ids, labels=ids).loss),
        peak_bytes(critic, lambda: critic(input_ids=ids, attention_mask=mask, position_ids=positions).sum()),
    )


def test_the_paper_presets_turn_it_on_and_the_default_leaves_it_off() -> None:
    for algorithm in ("ppo", "grpo"):
        assert JobSpec.from_preset(f"paper-{algorithm}", {"model": "tiny"}).algorithm.gradient_checkpointing
        spec = JobSpec.parse({"model": "tiny", "algorithm": {"name": algorithm}, "data": {"train": [{"path": "x"}]}})
        assert not spec.algorithm.gradient_checkpointing


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_flag_reaches_policy_and_critic(model_dir: Path, checkpointing: bool) -> None:
    models = models_for(model_dir, "ppo", checkpointing)
    assert models.critic is not None
    assert models.policy.is_gradient_checkpointing is checkpointing
    assert models.critic.trunk.is_gradient_checkpointing is checkpointing


def test_peak_memory_of_forward_and_backward_falls(model_dir: Path) -> None:
    ids = torch.randint(0, 64, (4, 256), generator=torch.Generator().manual_seed(0))
    peaks = {on: update_peaks(models_for(model_dir, "ppo", on), ids) for on in (False, True)}
    (policy_off, value_off), (policy_on, value_on) = peaks[False], peaks[True]
    # Six layers' activations kept versus one layer's recomputed at a time: well under half.
    assert policy_on < 0.5 * policy_off, peaks
    assert value_on < 0.5 * value_off, peaks
