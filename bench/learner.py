"""Learner update throughput: tokens/s of one GRPO update step, ours next to TRL's GRPOTrainer, in one run.

Both sides do the same work on the same model and identical tokens, with no generation: the policy's logprobs
before the update (TRL computes them too when completions come from vLLM, as ours do), the reference's logprobs
(KL with beta = kl_coef), then one optimiser step with gradient accumulation over micro-batches of the same size.
TRL runs its own loss path (`GRPOTrainer.compute_loss`, `_get_per_token_logps_and_entropies`, its fused LM head)
on its padded layout: every micro-batch as wide as the whole batch (left-padded prompts, right-padded
completions), inserted tokens out of the loss through its `tool_mask`. Ours is `trainer.update.train_step`.
Tokens/s counts the batch's real (prompt + response) tokens per second of the step. TRL 1.16 has no PPO trainer,
so our PPO step (with its critic) is printed with no baseline.

    python -m bench.learner [--model smollm2-135m-instruct] [--trajectories 8] [--micro-batch 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from services.contracts import JobSpec, ScoredTrajectory, Trajectory, VersionSpan
from services.models import resolve_model
from trainer.batch import TrainingBatch, collate
from trainer.policy import build_models, load_causal_lm
from trainer.update import train_step

GROUP = 4


def sample_batch(count: int, vocab: int, max_prompt: int, max_response: int, seed: int = 0) -> TrainingBatch:
    """Multi-turn-shaped trajectories: prompts of varied length; responses with a long-tailed (log-normal) length
    spread, a third of their tokens inserted passages (out of the loss); rewards 0/1 in groups of GROUP."""
    rng = np.random.default_rng(seed)
    items = []
    for row in range(count):
        prompt = rng.integers(0, vocab, rng.integers(max_prompt // 3, max_prompt + 1))
        length = int(np.clip(rng.lognormal(np.log(max_response / 4), 0.8), 8, max_response))
        response = rng.integers(0, vocab, length)
        mask = np.ones(length, dtype=np.uint8)
        start = length // 3
        mask[start : start + length // 3] = 0  # a retrieved passage
        trajectory = Trajectory(
            job_id="bench", request_id=f"r{row}", prompt_uid=f"q{row // GROUP}", prompt_ids=prompt,
            response_ids=response, loss_mask=mask, logprobs=np.zeros(length, dtype=np.float32),
            version_spans=[VersionSpan(start=0, end=length, version=0)],
        )  # fmt: skip
        items.append(ScoredTrajectory(trajectory=trajectory, reward=float(rng.integers(0, 2))))
    return collate(items, pad_id=0)


def spec_for(algorithm: str, model: str, trajectories: int, micro: int) -> JobSpec:
    # One mini-batch (one optimiser step) over the whole batch; mini- and micro-batches count trajectories.
    prompts = trajectories // GROUP
    algo: dict[str, Any] = {"prompts_per_step": prompts, "group_size": GROUP, "epochs": 1,
                            "mini_batch_size": trajectories, "micro_batch_size": micro,
                            "gradient_checkpointing": False}  # fmt: skip
    return JobSpec.from_preset(f"paper-{algorithm}", {"model": model, "algorithm": algo})


def ours(spec: JobSpec, path: str, batch: TrainingBatch) -> Callable[[], None]:
    models = build_models(spec, path, torch.device("cpu"))
    return lambda: train_step(spec.algorithm, batch, models)


def trl_inputs(batch: TrainingBatch) -> dict[str, torch.Tensor]:
    """Our batch in TRL's layout: the same tokens, prompts left-padded and completions right-padded."""
    p = batch.input_ids.shape[1] - batch.response_len
    return {
        "prompt_ids": batch.input_ids[:, :p], "prompt_mask": batch.attention_mask[:, :p],
        "completion_ids": batch.input_ids[:, p:], "completion_mask": batch.response_mask,
        "tool_mask": batch.loss_mask,
    }  # fmt: skip


def trl(spec: JobSpec, path: str, batch: TrainingBatch, micro: int, folder: str) -> Callable[[], None]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    algo = spec.algorithm
    args = GRPOConfig(
        output_dir=folder, use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=micro,
        gradient_accumulation_steps=len(batch) // micro, num_generations=GROUP, beta=algo.kl_coef,
        epsilon=algo.clip_eps, learning_rate=algo.actor_lr, max_grad_norm=algo.grad_clip,
        entropy_coef=algo.entropy_coef, max_completion_length=batch.response_len, loss_type="dapo",
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=load_causal_lm(path, torch.device("cpu")), reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args, train_dataset=Dataset.from_dict({"prompt": ["bench"] * len(batch)}),
        processing_class=AutoTokenizer.from_pretrained(path),
    )  # fmt: skip
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps  # what `Trainer.train` sets
    inputs = trl_inputs(batch)
    full_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    full_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    advantages = batch.scores - batch.scores.mean()  # any per-sequence advantages: the work does not depend on them
    loss_tokens = (inputs["completion_mask"] * inputs["tool_mask"]).sum()

    def step() -> None:
        model, keep = trainer.model, batch.response_len
        with torch.no_grad():
            old, _, _ = trainer._get_per_token_logps_and_entropies(model, full_ids, full_mask, keep, batch_size=micro)
            ref, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.ref_model, full_ids, full_mask, keep, batch_size=micro
            )
        model.train()
        for start in range(0, len(batch), micro):
            rows = slice(start, start + micro)
            part = {name: tensor[rows] for name, tensor in inputs.items()}
            part.update(advantages=advantages[rows], old_per_token_logps=old[rows], ref_per_token_logps=ref[rows],
                        num_items_in_batch=loss_tokens)  # fmt: skip
            trainer.accelerator.backward(trainer.compute_loss(model, part))
        trainer.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()

    return step


def timed(step: Callable[[], None]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--trajectories", type=int, default=8, help=f"a multiple of {GROUP} and of --micro-batch")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--max-prompt", type=int, default=64)
    parser.add_argument("--max-response", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per side, after one warm-up step")
    args = parser.parse_args()
    if args.trajectories % GROUP or args.trajectories % args.micro_batch:
        parser.error(f"--trajectories must be a multiple of {GROUP} and of --micro-batch")
    torch.manual_seed(0)
    path = resolve_model(args.model)
    vocab = load_causal_lm(path, torch.device("cpu")).config.vocab_size
    batch = sample_batch(args.trajectories, vocab, args.max_prompt, args.max_response)
    tokens = int(batch.attention_mask.sum())
    lengths = batch.response_mask.sum(dim=1).tolist()
    print(f"model {args.model}, {len(batch)} trajectories, {tokens} real tokens of {batch.input_ids.numel()} padded; "
          f"responses {min(lengths)}-{max(lengths)} tokens; micro-batch {args.micro_batch}; CPU, "
          f"{torch.get_num_threads()} threads", flush=True)  # fmt: skip
    grpo = spec_for("grpo", args.model, args.trajectories, args.micro_batch)
    with tempfile.TemporaryDirectory() as folder:
        steps = {"ours grpo": ours(grpo, path, batch), "trl grpo": trl(grpo, path, batch, args.micro_batch, folder)}
        ppo = spec_for("ppo", args.model, args.trajectories, args.micro_batch)
        steps["ours ppo"] = ours(ppo, path, batch)
        seconds: dict[str, list[float]] = {name: [] for name in steps}
        for name, step in steps.items():
            print(f"{name}: warm-up step {timed(step):.1f} s", flush=True)
        for _ in range(args.repeats):  # interleaved, so that a noisy neighbour slows both sides alike
            for name, step in steps.items():
                seconds[name].append(timed(step))
                print(f"{name}: {seconds[name][-1]:.1f} s", flush=True)
    rate = {name: tokens / statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        print(f"{name:10s} {rate[name]:10.1f} tokens/s  (median of {len(values)} steps: "
              f"{statistics.median(values):.2f} s)")  # fmt: skip
    print(f"grpo ratio ours/trl: {rate['ours grpo'] / rate['trl grpo']:.2f}x (target >= 1.5x)")
    print("ppo: no baseline (TRL 1.16 has no PPO trainer); our PPO step also trains the critic")


if __name__ == "__main__":
    main()
