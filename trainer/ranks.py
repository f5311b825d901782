"""The learner's ranks: which share of a batch this rank computes, and the small collectives that tie shares together.

A rank takes every world-th row (rows come sorted by length, so ranks get alike work). With FSDP every forward
and backward is a collective, so every rank must make the same number of calls: a rank that has run out of rows
runs a weightless stand-in micro-batch (`micro_batches` yields None for it). Control
messages and reductions of statistics go over a gloo group on the CPU, whatever the training backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    group: Any = None  # the gloo process group of control messages (None: the default group)

    @classmethod
    def current(cls, timeout: timedelta | None = None) -> Ranks:
        """This process's place in the initialised process group; a single rank when there is none."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return SINGLE
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
        return cls(dist.get_rank(), dist.get_world_size(), group)

    @property
    def is_driver(self) -> bool:
        """Rank 0 talks to the bus and the file system; the others follow its commands."""
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (any picklable object; tensors travel on the CPU)."""
        if self.world == 1:
            return value
        box = [value if self.is_driver else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def rows_per_rank(self, total: int) -> int:
        return -(-total // self.world)

    def micro_batches(self, rows: Tensor, size: int) -> list[Tensor | None]:
        """This rank's share of `rows` (`rows[rank::world]`) in micro-batches of `size`, padded with None to the
        count every rank makes (the count of the largest share)."""
        per = self.rows_per_rank(len(rows))
        mine = rows[self.rank :: self.world]
        count = -(-per // size)
        return [mine[i * size : (i + 1) * size] if i * size < len(mine) else None for i in range(count)]

    def gather_rows(self, local: Tensor, total: int) -> Tensor:
        """Every rank's share (rows in `micro_batches` order) put back in place: the (total, ...) tensor of all."""
        if self.world == 1:
            return local
        per = self.rows_per_rank(total)
        padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype)
        padded[: len(local)] = local.detach().cpu()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        joined = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
        for rank, part in enumerate(parts):
            joined[rank :: self.world] = part[: len(range(rank, total, self.world))]
        return joined.to(local.device)

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the ranks."""
        if self.world == 1:
            return values
        tensor = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(tensor, group=self.group)
        return dict(zip(values, tensor.tolist(), strict=True))


SINGLE = Ranks()
