"""Scored trajectories -> padded training tensors.

Rows are laid out as `[left padding, prompt, response, right padding]` with every prompt ending at column P and
every response starting there, so the response region is the same last R columns of every row (what
`algos.response_logprobs` expects) and position ids come from the attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from services.contracts import ScoredTrajectory


@dataclass
class TrainingBatch:
    input_ids: Tensor  # (B, P + R)
    attention_mask: Tensor  # (B, P + R): 1 on prompt and response tokens
    position_ids: Tensor  # (B, P + R)
    response_mask: Tensor  # (B, R): 1 on every real response token (model-generated and inserted)
    loss_mask: Tensor  # (B, R): 1 on model-generated tokens only
    behaviour_logprobs: Tensor  # (B, R): logprobs of the policy that sampled each token (0 where not sampled)
    scores: Tensor  # (B,): outcome rewards
    prompt_uids: list[str]
    staleness: Tensor  # (B,): policy versions between a row's oldest token and the policy it trains

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> TrainingBatch:
        """The same batch with its tensors on `device` (the policy's)."""
        return TrainingBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
            self.response_mask.to(device), self.loss_mask.to(device), self.behaviour_logprobs.to(device),
            self.scores.to(device), self.prompt_uids, self.staleness.to(device),
        )  # fmt: skip

    def lengths(self) -> Tensor:
        """Tokens per row (prompt and response)."""
        return self.attention_mask.sum(dim=1)

    def compact(self) -> TrainingBatch:
        """The same rows without the columns that are padding in every one of them (leading prompt padding,
        trailing response padding); prompts still end, and responses start, at one column."""
        lead = int(self.attention_mask.any(dim=0).int().argmax())
        response_len = max(int(self.response_mask.sum(dim=1).max()), 1)
        cols = slice(lead, self.input_ids.shape[1] - self.response_len + response_len)
        r = slice(0, response_len)
        return TrainingBatch(
            self.input_ids[:, cols], self.attention_mask[:, cols], self.position_ids[:, cols],
            self.response_mask[:, r], self.loss_mask[:, r], self.behaviour_logprobs[:, r], self.scores,
            self.prompt_uids, self.staleness,
        )  # fmt: skip

    def select(self, rows: slice | Tensor | list[int]) -> TrainingBatch:
        """A sub-batch (mini- or micro-batch) with the same column layout."""
        index = rows if isinstance(rows, slice) else torch.as_tensor(rows, dtype=torch.long)
        picked = index if isinstance(index, slice) else index.tolist()
        uids = self.prompt_uids[picked] if isinstance(picked, slice) else [self.prompt_uids[i] for i in picked]
        return TrainingBatch(
            self.input_ids[index], self.attention_mask[index], self.position_ids[index], self.response_mask[index],
            self.loss_mask[index], self.behaviour_logprobs[index], self.scores[index], uids, self.staleness[index],
        )  # fmt: skip


def collate(scored: list[ScoredTrajectory], pad_id: int, policy_version: int) -> TrainingBatch:
    """One padded batch of `scored` to update the policy at `policy_version` with."""
    if not scored:
        raise ValueError("cannot build a training batch from zero trajectories")
    prompt_len = max(s.trajectory.prompt_ids.size for s in scored)
    response_len = max(max(s.trajectory.response_ids.size for s in scored), 1)
    batch = len(scored)
    width = prompt_len + response_len
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    response_mask = torch.zeros((batch, response_len), dtype=torch.long)
    loss_mask = torch.zeros((batch, response_len), dtype=torch.long)
    logprobs = torch.zeros((batch, response_len), dtype=torch.float32)
    for row, item in enumerate(scored):
        trajectory = item.trajectory
        prompt = torch.from_numpy(trajectory.prompt_ids.astype("int64"))
        response = torch.from_numpy(trajectory.response_ids.astype("int64"))
        p, r = prompt.numel(), response.numel()
        input_ids[row, prompt_len - p : prompt_len] = prompt
        input_ids[row, prompt_len : prompt_len + r] = response
        attention[row, prompt_len - p : prompt_len + r] = 1
        response_mask[row, :r] = 1
        loss_mask[row, :r] = torch.from_numpy(trajectory.loss_mask.astype("int64"))
        logprobs[row, :r] = torch.from_numpy(trajectory.logprobs.copy())
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return TrainingBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        response_mask=response_mask,
        loss_mask=loss_mask,
        behaviour_logprobs=logprobs,
        scores=torch.tensor([item.reward for item in scored], dtype=torch.float32),
        prompt_uids=[item.trajectory.prompt_uid for item in scored],
        staleness=torch.tensor([policy_version - item.trajectory.oldest_version for item in scored]),
    )
