"""Shared prompts computed once: the rows of a GRPO group repeat one prompt, so a micro-batch's forward pass runs
each distinct prompt once, hands its key/value cache to every row that starts with it, and runs only the
responses on top. Autograd flows through the shared cache, so the logits and the gradients are the ones of the
full forward pass (up to float rounding); what is saved is every repeated prompt token's share of the compute,
which is most of it when prompts are long and responses short (the demo: ~200 prompt tokens, ~80 response).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.batch import TrainingBatch


def prompt_groups_first(batch: TrainingBatch, rows: Tensor) -> Tensor:
    """`rows` ordered so that rows with the same prompt are adjacent (a micro-batch then holds few distinct
    prompts), groups with the longest row first and rows longest first within a group (little padding)."""
    lengths = batch.lengths()
    longest: dict[str, int] = {}
    for row in rows.tolist():
        uid = batch.prompt_uids[row]
        longest[uid] = max(longest.get(uid, 0), int(lengths[row]))
    rank = {uid: i for i, uid in enumerate(sorted(longest, key=lambda u: -longest[u]))}
    keyed = sorted(rows.tolist(), key=lambda row: (rank[batch.prompt_uids[row]], -int(lengths[row])))
    return torch.tensor(keyed, dtype=rows.dtype)


def shared_prompt_logits(model: nn.Module, batch: TrainingBatch) -> Tensor | None:
    """`forward_logits` of a compacted batch whose rows repeat prompts: `(B, R + 1, vocab)`; None when every
    prompt is distinct (nothing to share) or the model checkpoints activations (Hugging Face models then refuse
    a key/value cache)."""
    r = batch.response_len
    p = batch.input_ids.shape[1] - r
    if len(batch) < 2 or p < 1 or getattr(model, "is_gradient_checkpointing", False):
        return None
    prompt_ids, prompt_mask = batch.input_ids[:, :p], batch.attention_mask[:, :p]
    # Pad ids may equal real tokens: a prompt is its ids together with its mask.
    distinct, owner = torch.unique(torch.cat([prompt_ids * prompt_mask, prompt_mask], dim=1), dim=0,
                                   return_inverse=True)  # fmt: skip
    if len(distinct) == len(batch):
        return None
    first = torch.zeros(len(distinct), dtype=torch.long, device=owner.device).scatter_reduce(
        0, owner, torch.arange(len(batch), device=owner.device), reduce="amin", include_self=False
    )
    prompts = model(
        input_ids=prompt_ids[first], attention_mask=prompt_mask[first], position_ids=batch.position_ids[first, :p],
        use_cache=True, logits_to_keep=1,
    )  # fmt: skip
    cache = prompts.past_key_values
    cache.batch_select_indices(owner)  # each row reads its prompt's keys and values
    responses = model(
        input_ids=batch.input_ids[:, p:], attention_mask=batch.attention_mask, position_ids=batch.position_ids[:, p:],
        past_key_values=cache, use_cache=True,
    )  # fmt: skip
    return torch.cat([prompts.logits[owner], responses.logits], dim=1)
