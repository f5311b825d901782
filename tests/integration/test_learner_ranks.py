"""Two FSDP ranks (real gloo process group, two processes) make the update one rank makes on the whole batch, and
a checkpoint they write resumes exactly."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from services.contracts import JobSpec, ScoredTrajectory, Trajectory, VersionSpan
from services.models import resolve_model
from trainer.batch import TrainingBatch, collate
from trainer.collective import Collective
from trainer.policy import build_models
from trainer.ranks import SINGLE, Ranks

MODEL = "tiny-random-qwen2"
ALGORITHMS = ("grpo", "ppo")


def spec_for(algorithm: str) -> JobSpec:
    # 7 trajectories, mini-batches of 6 and micro-batches of 4 (2 per rank): rank 1 runs out of rows and joins
    # with stand-ins.
    overrides = {
        "model": MODEL,
        "algorithm": {
            "actor_lr": 1e-2, "actor_warmup_ratio": 0.0, "prompts_per_step": 3, "group_size": 3,
            "mini_batch_size": 6, "micro_batch_size": 4,
            **({"critic_lr": 1e-2, "critic_warmup_ratio": 0.0} if algorithm == "ppo" else {}),
        },
        "schedule": {"total_steps": 10},
    }  # fmt: skip
    return JobSpec.from_preset(f"paper-{algorithm}", overrides)


def batches() -> list[TrainingBatch]:
    """Two batches of variable-length trajectories (prompts 3-9 tokens, responses 2-17, some inserted tokens)."""
    rng = np.random.default_rng(3)
    result = []
    for _ in range(2):
        items = []
        for row in range(7):
            prompt, response = rng.integers(1, 600, rng.integers(3, 10)), rng.integers(1, 600, rng.integers(2, 18))
            mask = (rng.random(response.size) > 0.2).astype(np.uint8)
            trajectory = Trajectory(
                job_id="j", request_id=f"r{row}", prompt_uid=f"q:{row % 3}", prompt_ids=prompt, response_ids=response,
                loss_mask=mask, logprobs=-rng.random(response.size),
                version_spans=[VersionSpan(start=0, end=response.size, version=0)],
            )  # fmt: skip
            items.append(ScoredTrajectory(trajectory=trajectory, reward=float(rng.integers(0, 2))))
        result.append(collate(items, pad_id=0, policy_version=0))
    return result


def policy_copy(work: Collective) -> dict[str, torch.Tensor]:
    """The full policy state dict, copied (on one rank its tensors are the live parameters)."""
    return {name: tensor.clone() for name, tensor in work.full_state(optimizers=False)["policy"].items()}


def train_save_resume(work: Collective, folder: Path, tokenizer: Any) -> dict[str, Any]:
    """Step 1, checkpoint, step 2; then load the checkpoint and do step 2 again. Rank 0's view of it all."""
    first, second = batches()
    torch.manual_seed(11)
    stats = [work.train(first, 1.0)]
    work.save(folder, tokenizer)
    stats.append(work.train(second, 1.0))
    final = policy_copy(work)
    work.load(folder)
    again = work.train(second, 1.0)
    return {"stats": stats, "policy": final, "resumed_stats": again, "resumed_policy": policy_copy(work)}


def rank_main(rank: int, world: int, port: int, out: str) -> None:
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ranks = Ranks.current()
        assert (ranks.rank, ranks.world) == (rank, world)
        path = resolve_model(MODEL)
        results = {}
        for algorithm in ALGORITHMS:
            spec = spec_for(algorithm)
            work = Collective(spec, build_models(spec, path, torch.device("cpu")), torch.device("cpu"), ranks)
            if not ranks.is_driver:
                work.follow()
                continue
            folder = Path(out) / f"{algorithm}-checkpoint"
            results[algorithm] = train_save_resume(work, folder, AutoTokenizer.from_pretrained(path))
            work.stop()
        if ranks.is_driver:
            torch.save(results, Path(out) / "ranks.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(rank_main, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return torch.load(out / "ranks.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_ranks_make_the_update_of_one_rank_and_resume_exactly(
    two_ranks: dict[str, Any], algorithm: str, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    spec, path = spec_for(algorithm), resolve_model(MODEL)
    torch.manual_seed(0)
    one = Collective(spec, build_models(spec, path, torch.device("cpu")), torch.device("cpu"), SINGLE)
    initial = policy_copy(one)
    single = train_save_resume(one, tmp_path / "checkpoint", AutoTokenizer.from_pretrained(path))
    sharded = two_ranks[algorithm]

    for step, (ours, theirs) in enumerate(zip(sharded["stats"], single["stats"], strict=True), 1):
        assert set(ours) == set(theirs)
        for name in ("policy_loss", "entropy", "grad_norm", "clip_fraction", "approx_kl", "kl", "value_loss"):
            if name in theirs:
                assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-6), (step, name)
    assert set(sharded["policy"]) == set(single["policy"])
    for name, tensor in single["policy"].items():
        # Adam divides by the gradient's RMS, which magnifies summation-order noise where a gradient is near 0
        # (an element can move by up to the learning rate either way): compare each tensor's update as a whole.
        update, theirs = tensor - initial[name], sharded["policy"][name] - initial[name]
        assert float(update.abs().max()) > 1e-3, f"the two steps did not move {name}"
        assert float((theirs - update).norm() / update.norm()) < 2e-3, name
    # Resuming from the checkpoint after step 1 repeats step 2 exactly: optimiser moments, schedule and shuffle.
    for run in (sharded, single):
        assert run["resumed_stats"] == run["stats"][1]
        for name, tensor in run["policy"].items():
            assert torch.equal(run["resumed_policy"][name], tensor), name
