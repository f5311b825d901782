"""The learner's models: the policy (an HF causal LM), a frozen reference for KL, and a critic for PPO.

On several ranks each model is sharded with FSDP2 (`fully_shard` per decoder layer, then the whole model);
fp32 on CPU, bf16 parameters with fp32 reduction on GPU. Saving gathers full state dicts onto rank 0's CPU;
loading gives every rank the full state dict and each keeps its shard (the same calls on one rank).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from transformers import AutoModelForCausalLM, PreTrainedModel

from services.contracts import GRPOConfig, JobSpec, PPOConfig
from services.hardware import cpu_computes_bf16
from trainer import algos
from trainer.update import Models

log = logging.getLogger(__name__)


class Critic(nn.Module):
    """A value model: the policy's transformer trunk with a scalar head on every position."""

    def __init__(self, causal_lm: PreTrainedModel) -> None:
        super().__init__()
        self.trunk = causal_lm.get_decoder()
        hidden = causal_lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self.value_head(hidden.last_hidden_state).squeeze(-1).float()


def load_causal_lm(path: str, device: torch.device) -> PreTrainedModel:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device)


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 over the process group when there is more than one rank; the model unchanged otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    on_gpu = next(model.parameters()).is_cuda
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if on_gpu else None
    kwargs = {"mp_policy": policy} if policy else {}
    layers = getattr(getattr(model, "model", model), "layers", None) or getattr(
        getattr(model, "trunk", model), "layers", []
    )
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in the backward pass (non-reentrant: parameters get gradients
    even where the layer's inputs need none)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def cpu_autocast_dtype(learner_cpu_bf16: bool, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for a CPU learner that asks for it, where the CPU computes bf16 natively; elsewhere fp32
    (emulated bf16 would make the update ~200x slower: services/hardware.py)."""
    if not learner_cpu_bf16 or device.type != "cpu":
        return None
    if not cpu_computes_bf16():
        log.warning("resources.learner_cpu_bf16: this CPU has neither AVX512-BF16 nor AMX; computing in fp32")
        return None
    return torch.bfloat16


def build_models(spec: JobSpec, model_path: str, device: torch.device) -> Models:
    """Policy, optimiser and warm-up schedule; a frozen reference when KL is used; a critic for PPO (an evaluation
    job needs neither: it only serves the policy). `algorithm.gradient_checkpointing` applies to policy and critic."""
    config: PPOConfig | GRPOConfig = spec.algorithm
    total = spec.schedule.total_steps
    training = spec.kind == "train"
    base = load_causal_lm(model_path, device)
    reference = None
    if training and config.kl_coef > 0:
        reference = copy.deepcopy(base).eval().requires_grad_(False)
    critic = Critic(copy.deepcopy(base)).to(device) if training and isinstance(config, PPOConfig) else None
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(base)
        if critic is not None:
            enable_gradient_checkpointing(critic.trunk)
    policy = shard(base)
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=config.actor_lr, betas=config.adam_betas, weight_decay=config.weight_decay
    )
    models = Models(
        policy=policy,
        optimizer=optimizer,
        scheduler=algos.warmup_constant_scheduler(optimizer, total, config.actor_warmup_ratio),
        reference=shard(reference) if reference is not None else None,
        autocast_dtype=cpu_autocast_dtype(spec.resources.learner_cpu_bf16, device),
    )
    if critic is not None and isinstance(config, PPOConfig):
        models.critic = shard(critic)
        models.critic_optimizer = torch.optim.AdamW(
            models.critic.parameters(), lr=config.critic_lr, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        models.critic_scheduler = algos.warmup_constant_scheduler(
            models.critic_optimizer, total, config.critic_warmup_ratio
        )
    return models


FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(models: Models, optimizers: bool) -> dict[str, Any]:
    """The policy's full state dict (and the critic's and optimisers' with `optimizers`), on the CPU; a collective:
    every rank calls it, rank 0 gets the tensors (an empty dict elsewhere when sharded)."""
    state: dict[str, Any] = {"policy": get_model_state_dict(models.policy, options=FULL)}
    if optimizers:
        state["optimizer"] = get_optimizer_state_dict(models.policy, models.optimizer, options=FULL)
        if models.critic is not None and models.critic_optimizer is not None:
            state["critic"] = get_model_state_dict(models.critic, options=FULL)
            state["critic_optimizer"] = get_optimizer_state_dict(models.critic, models.critic_optimizer, options=FULL)
    return state


def load_full_state(models: Models, state: dict[str, Any]) -> None:
    """Load what `full_state` returned on rank 0 (every rank passes the whole of it; each keeps its shard)."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(models.policy, state["policy"], options=options)
    if "optimizer" in state:
        set_optimizer_state_dict(models.policy, models.optimizer, state["optimizer"], options=options)
    if models.critic is not None and state.get("critic") is not None:
        assert models.critic_optimizer is not None
        set_model_state_dict(models.critic, state["critic"], options=options)
        set_optimizer_state_dict(models.critic, models.critic_optimizer, state["critic_optimizer"], options=options)
