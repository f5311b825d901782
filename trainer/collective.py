"""The work every learner rank does together: updates, gathering full state dicts, loading checkpoints.

Rank 0, the driver, alone talks to the bus and writes files; when it needs the other ranks it names the work, the
name and arguments reach them as a broadcast (`follow` is all that ranks > 0 ever run), and every rank does it.
On one rank nothing is sent and the same code runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct
from transformers import AutoModelForCausalLM

from services.contracts import JobSpec
from trainer.batch import TrainingBatch
from trainer.policy import full_state, load_full_state
from trainer.ranks import Ranks
from trainer.update import Models, train_step

STOP = "stop"


class Collective:
    def __init__(self, spec: JobSpec, models: Models, device: torch.device, ranks: Ranks) -> None:
        self.spec = spec
        self.models = models
        self.device = device
        self.ranks = ranks
        self._work: dict[str, Callable[..., Any]] = {
            "train": self._train, "full_state": self._full_state, "load": self._load,
        }  # fmt: skip

    # -- rank 0 -----------------------------------------------------------------------------------------------
    def train(self, batch: TrainingBatch, temperature: float) -> dict[str, float]:
        """One update on `batch` (on the CPU; every rank moves it to its device and computes its share)."""
        return self._run("train", batch, temperature)

    def full_state(self, optimizers: bool) -> dict[str, Any]:
        """The full state dicts on rank 0's CPU (see `policy.full_state`)."""
        return self._run("full_state", optimizers)

    def save(self, folder: Path, tokenizer: Any) -> None:
        """Write the model part of a checkpoint into `folder`: the policy as an HF folder (`policy/`) and
        `trainer_state.pt` (optimisers, critic, schedulers, RNG), gathered from every rank's shards."""
        models = self.models
        state = self.full_state(optimizers=True)
        models.policy.save_pretrained(folder / "policy", safe_serialization=True, state_dict=state.pop("policy"))
        tokenizer.save_pretrained(folder / "policy")
        torch.save(
            {
                **state,
                "scheduler": models.scheduler.state_dict(),
                "critic_scheduler": models.critic_scheduler.state_dict() if models.critic_scheduler else None,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            },
            folder / "trainer_state.pt",
        )

    def load(self, folder: Path) -> None:
        """Every rank loads what `save` wrote (shared storage): weights, optimisers, schedulers, RNG."""
        self._run("load", str(folder))

    def stop(self) -> None:
        """Release the other ranks (after the job's last collective)."""
        self.ranks.broadcast((STOP, ()))

    def _run(self, name: str, *args: Any) -> Any:
        assert self.ranks.is_driver, "only rank 0 names collective work"
        self.ranks.broadcast((name, args))
        return self._work[name](*args)

    # -- ranks > 0 --------------------------------------------------------------------------------------------
    def follow(self) -> None:
        """Do what rank 0 names until it says stop."""
        while True:
            name, args = self.ranks.broadcast(None)
            if name == STOP:
                return
            self._work[name](*args)

    # -- the work ---------------------------------------------------------------------------------------------
    def _train(self, batch: TrainingBatch, temperature: float) -> dict[str, float]:
        return train_step(self.spec.algorithm, batch.to(self.device), self.models, temperature, self.ranks)

    def _full_state(self, optimizers: bool) -> dict[str, Any]:
        return full_state(self.models, optimizers)

    def _load(self, folder: str) -> None:
        path, models = Path(folder), self.models
        dtype = next(models.policy.parameters()).dtype
        saved = AutoModelForCausalLM.from_pretrained(path / "policy", dtype=dtype)
        # weights_only: a checkpoint is data, never code; numpy's RNG state (an array) is all it holds beyond
        # tensors and plain values.
        with torch.serialization.safe_globals([_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]):
            state = torch.load(path / "trainer_state.pt", weights_only=True)
        load_full_state(models, {"policy": saved.state_dict(), **state})
        models.scheduler.load_state_dict(state["scheduler"])
        if models.critic_scheduler is not None and state.get("critic_scheduler") is not None:
            models.critic_scheduler.load_state_dict(state["critic_scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
