"""Shared prompts run once: the same logits and gradients as the full forward pass, on a real tiny causal LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from services.contracts import ScoredTrajectory, Trajectory, VersionSpan
from trainer.batch import TrainingBatch, collate
from trainer.prefix import prompt_groups_first, shared_prompt_logits


@pytest.fixture
def model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    return Qwen2ForCausalLM(config).double()


def scored(prompt: list[int], response: list[int], uid: str) -> ScoredTrajectory:
    trajectory = Trajectory(
        job_id="j", request_id="r", prompt_uid=uid, prompt_ids=np.array(prompt), response_ids=np.array(response),
        loss_mask=np.ones(len(response), dtype=np.uint8), logprobs=np.zeros(len(response)),
        version_spans=[VersionSpan(start=0, end=len(response), version=0)],
    )  # fmt: skip
    return ScoredTrajectory(trajectory=trajectory, reward=0.0)


def grouped_batch() -> TrainingBatch:
    """Two groups with prompts of different lengths (so one is left-padded) and responses of different lengths."""
    long_prompt, short_prompt = [1, 2, 3, 4, 5, 6], [7, 8, 9]
    items = [
        scored(long_prompt, [10, 11, 12], "a"), scored(short_prompt, [13, 14, 15, 16, 17], "b"),
        scored(long_prompt, [18], "a"), scored(short_prompt, [19, 20], "b"), scored(long_prompt, [21, 22], "a"),
    ]  # fmt: skip
    return collate(items, pad_id=0, policy_version=0)


def full_logits(model: Qwen2ForCausalLM, batch: TrainingBatch) -> torch.Tensor:
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=batch.response_len + 1)  # fmt: skip
    return out.logits


def response_loss(logits: torch.Tensor, batch: TrainingBatch) -> torch.Tensor:
    """A loss over every real response position, so every row's gradient counts."""
    r = batch.response_len
    picked = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, -r:, None])[..., 0]
    return -(picked * batch.response_mask).sum()


def gradients(model: Qwen2ForCausalLM) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def test_shared_prompts_give_the_full_forward_logits_and_gradients(model: Qwen2ForCausalLM) -> None:
    batch = grouped_batch()
    expected = full_logits(model, batch)
    response_loss(expected, batch).backward()
    expected_grads = gradients(model)

    shared = shared_prompt_logits(model, batch)
    assert shared is not None, "rows repeat prompts: the shared path must run"
    assert shared.shape == expected.shape
    real = torch.cat([torch.ones(len(batch), 1), batch.response_mask], dim=1).bool()  # padding columns aside
    torch.testing.assert_close(shared[real], expected[real].detach(), rtol=1e-9, atol=1e-9)
    response_loss(shared, batch).backward()
    # Measured in float64: the logits agree bitwise, the gradients to ~1e-7 of their largest entry (~1e-8 of
    # each tensor's norm); full precision would give ~1e-15; the bound still catches a shared cache cut off from
    # the graph.
    for got, want in zip(gradients(model), expected_grads, strict=True):
        assert float((got - want).norm() / want.norm().clamp(min=1e-12)) < 1e-6


def test_distinct_prompts_or_checkpointing_take_the_plain_path(model: Qwen2ForCausalLM) -> None:
    distinct = collate([scored([1, 2], [3], "a"), scored([4, 5], [6], "b")], pad_id=0, policy_version=0)
    assert shared_prompt_logits(model, distinct) is None
    model.gradient_checkpointing_enable()
    assert shared_prompt_logits(model, grouped_batch()) is None


def test_rows_of_a_prompt_are_adjacent_longest_group_first() -> None:
    batch = grouped_batch()
    order = prompt_groups_first(batch, torch.arange(len(batch))).tolist()
    # group "a" holds the longest row (6 + 3 tokens, against b's 3 + 5); within a group, longest first
    assert order == [0, 4, 2, 1, 3]
