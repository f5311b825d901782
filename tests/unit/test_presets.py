"""Every field of the reference presets against the reference's training scripts (PeterGriffinJin/Search-R1:
scripts/nq_hotpotqa/v0.2/train_{ppo,grpo}.sh, the root's train_{ppo,grpo}.sh, verl/trainer/config/ppo_trainer.yaml
for what a script leaves out, and verl's AdamW defaults in fsdp_workers.py)."""

from __future__ import annotations

from typing import Any

import pytest

from services.contracts import PRESETS, JobSpec

PRESET_NAMES = ("reference-v02-ppo", "reference-v02-grpo", "reference-root-ppo", "reference-root-grpo")
NQ_HOTPOTQA = [("PeterJinGo/nq_hotpotqa_train", "hf", "train")], [("PeterJinGo/nq_hotpotqa_train", "hf", "test")]
NQ_SEARCH = [("nq_search/train.parquet", "searchr1", "train")], [("nq_search/test.parquet", "searchr1", "train")]
NO = None  # the field does not exist for that algorithm

# field: (v0.2 ppo, v0.2 grpo, root ppo, root grpo)  # where the reference sets it
REFERENCE: dict[str, tuple[Any, Any, Any, Any]] = {
    "model": ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B", "meta-llama/Llama-3.2-3B", "Qwen/Qwen2.5-3B"),  # BASE_MODEL
    "algorithm.name": ("ppo", "grpo", "ppo", "grpo"),  # algorithm.adv_estimator=gae / grpo
    "algorithm.prompts_per_step": (512,) * 4,  # data.train_batch_size
    "algorithm.group_size": (1, 5, 1, 5),  # rollout.n_agent
    "algorithm.mini_batch_size": (256,) * 4,  # actor.ppo_mini_batch_size (trajectories)
    "algorithm.micro_batch_size": (64,) * 4,  # actor.ppo_micro_batch_size
    "algorithm.epochs": (1,) * 4,  # ppo_epochs (yaml)
    "algorithm.actor_lr": (1e-6,) * 4,  # actor.optim.lr
    "algorithm.actor_warmup_ratio": (0.285,) * 4,  # actor.optim.lr_warmup_steps_ratio
    "algorithm.critic_lr": (1e-5, NO, 1e-5, NO),  # critic.optim.lr
    "algorithm.critic_warmup_ratio": (0.015, NO, 0.015, NO),  # critic.optim.lr_warmup_steps_ratio
    "algorithm.kl_coef": (0.001,) * 4,  # algorithm.kl_ctrl.kl_coef (PPO) / actor.kl_loss_coef (GRPO)
    "algorithm.kl_estimator": ("k1", "k3", "k1", "k3"),  # kl_penalty: kl (yaml) / kl_loss_type=low_var_kl
    "algorithm.kl_in_reward": (True, False, True, False),  # use_kl_loss=true for GRPO
    "algorithm.clip_eps": (0.2,) * 4,  # actor.clip_ratio (yaml)
    "algorithm.entropy_coef": (0.001,) * 4,  # actor.entropy_coeff (yaml)
    "algorithm.grad_clip": (1.0,) * 4,  # actor.grad_clip (yaml)
    "algorithm.value_clip": (0.5, NO, 0.5, NO),  # critic.cliprange_value (yaml)
    "algorithm.gamma": (1.0, NO, 1.0, NO),  # algorithm.gamma (yaml)
    "algorithm.lam": (1.0, NO, 1.0, NO),  # algorithm.lam (yaml)
    "algorithm.std_eps": (NO, 1e-6, NO, 1e-6),  # core_algos.compute_grpo_outcome_advantage epsilon
    "algorithm.adam_betas": ((0.9, 0.999),) * 4,  # AdamW betas default (fsdp_workers.py)
    "algorithm.weight_decay": (0.01,) * 4,  # AdamW weight_decay default 1e-2 (fsdp_workers.py)
    "algorithm.gradient_checkpointing": (True,) * 4,  # model.enable_gradient_checkpointing=true
    "algorithm.max_staleness": (0,) * 4,  # synchronous: every step generates, then trains
    "algorithm.behaviour_weight_cap": (5.0,) * 4,  # no effect on-policy (max_staleness 0); the reference has none
    "data.train": (NQ_HOTPOTQA[0], NQ_HOTPOTQA[0], NQ_SEARCH[0], NQ_SEARCH[0]),  # data.train_files
    "data.eval": (NQ_HOTPOTQA[1], NQ_HOTPOTQA[1], NQ_SEARCH[1], NQ_SEARCH[1]),  # data.val_files
    "rollout.max_turns": (4, 4, 2, 2),  # max_turns
    "rollout.temperature": (1.0,) * 4,  # rollout.temperature=1
    "rollout.top_p": (1.0, 0.95, 0.95, 0.95),  # rollout.top_p=1.0 in v0.2 PPO, else the yaml's 0.95
    "rollout.max_tokens_per_turn": (500,) * 4,  # data.max_response_length
    "rollout.max_obs_tokens": (500,) * 4,  # data.max_obs_length
    "rollout.max_prompt_tokens": (2048,) * 4,  # data.max_start_length
    "rollout.max_context_tokens": (4096,) * 4,  # data.max_prompt_length (README: ours keeps the turn inside it)
    "rollout.topk": (3,) * 4,  # retriever.topk
    "reward.kind": ("em",) * 4,  # main_ppo.py scores with qa_em.compute_score_em
    "resources.learner_nodes": (1,) * 4,  # trainer.nnodes
    "resources.learner_gpus_per_node": (8,) * 4,  # trainer.n_gpus_per_node
    "resources.learner_workers": (8,) * 4,  # one FSDP rank per GPU
    "schedule.total_steps": (1005,) * 4,  # trainer.total_training_steps
    "schedule.save_interval": (100,) * 4,  # trainer.save_freq
    "schedule.eval_interval": (100, 100, 50, 50),  # trainer.test_freq
    "schedule.eval_before_train": (True,) * 4,  # +trainer.val_before_train=true
}
# Fields of ours the reference has no counterpart for, and what the presets leave them at.
OURS_ONLY = {
    "name", "kind", "data.shuffle_seed", "data.eval_without_search", "rollout.request_timeout_s",
    "rollout.prompt_style", "reward.format_scores", "reward.compat",
    "resources.learner_cpus_per_worker", "resources.learner_cpu_bf16", "resources.rollout_replicas",
    "resources.rollout_gpus_per_replica", "schedule.seed", "schedule.time_limit_s", "schedule.max_restarts",
    "algorithm.skip_uniform_groups",
}  # fmt: skip


def value(spec: JobSpec, path: str) -> Any:
    if path in ("data.train", "data.eval"):
        return [(source.path, source.format, source.split) for source in getattr(spec.data, path.split(".")[1])]
    node: Any = spec
    for part in path.split("."):
        if not hasattr(node, part):
            return NO
        node = getattr(node, part)
    return node


def leaves(model: Any, prefix: str = "") -> set[str]:
    """Dotted paths of the spec's fields; a list of data sources and the format scores count as one each."""
    paths = set()
    for name in type(model).model_fields:
        path = f"{prefix}{name}"
        child = getattr(model, name)
        if hasattr(type(child), "model_fields") and path not in ("reward.format_scores",):
            paths |= leaves(child, path + ".")
        else:
            paths.add(path)
    return paths


@pytest.mark.parametrize("index", range(4), ids=PRESET_NAMES)
def test_every_preset_field_is_the_reference_scripts(index: int) -> None:
    spec = JobSpec.from_preset(PRESET_NAMES[index])
    assert spec.name == PRESET_NAMES[index]
    wrong = {
        path: (value(spec, path), row[index]) for path, row in REFERENCE.items() if value(spec, path) != row[index]
    }
    assert not wrong, f"preset value, reference value: {wrong}"
    unchecked = leaves(spec) - set(REFERENCE) - OURS_ONLY
    assert not unchecked, f"fields the table does not cover: {sorted(unchecked)}"


def test_the_ours_only_fields_are_at_our_defaults_and_the_paper_names_are_v02() -> None:
    spec = JobSpec.from_preset("reference-v02-grpo")
    assert (spec.reward.compat, spec.rollout.prompt_style, spec.schedule.time_limit_s) == ("ours", "instruct", None)
    assert spec.schedule.max_restarts == 0, "a learner that dies fails its job unless the job asks for relaunches"
    assert PRESETS["paper-ppo"] is PRESETS["reference-v02-ppo"]
    assert PRESETS["paper-grpo"] is PRESETS["reference-v02-grpo"]
    assert JobSpec.from_preset("paper-grpo") == spec
