"""A "programmed" tiny Qwen2 whose greedy output is known in advance, for tests that need a model that acts.

Attention and MLP outputs are zeroed, so the last token alone decides the next one, and the embeddings and LM
head encode a few bigram rules:

    (any token) -> <search> -> " capital" -> </search>          (the first turn searches)
    "\\n\\n"    -> <answer> -> " Paris"   -> </answer>          (after `</information>\\n\\n` the model answers)

so an episode on it searches once and answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RULES = {"<search>": "Ġcapital", "Ġcapital": "</search>", "ĊĊ": "<answer>", "<answer>": "ĠParis", "ĠParis": "</answer>"}
DEFAULT_NEXT = "<search>"
SEARCH_TURN = "<search> capital</search>"
ANSWER_TURN = "<answer> Paris</answer>"


def program_bigram(model: Any, tokenizer: Any, rules: dict[str, str], default: str, strength: float = 20.0) -> None:
    """Make `model` (Qwen2) a bigram machine: next token = rules[last] if last has a rule, else `default`."""
    import torch

    vocab, dim = model.model.embed_tokens.weight.shape
    half = dim // 2
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in {*rules, *rules.values(), default}}
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(vocab, dim - 1, generator=generator)
    rule_rows = [ids[tok] for tok in rules]
    q, _ = torch.linalg.qr(torch.randn(dim - 1, len(rule_rows), generator=generator))
    directions[rule_rows] = q.T  # the rule tokens' directions are orthogonal to each other
    directions = directions / directions.norm(dim=1, keepdim=True) * half**0.5
    embed = torch.cat([torch.full((vocab, 1), half**0.5), directions], dim=1)  # every row has RMS 1
    head = torch.zeros(vocab, dim)
    head[ids[default], 0] = strength / half**0.5  # logit `strength` after every token
    for src, dst in rules.items():
        head[ids[dst], 1:] += (2 * strength / half) * embed[ids[src], 1:]  # logit 2 * strength after `src`
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(embed)
        model.lm_head.weight.copy_(head)
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


def program_model(random_model: Path, dest: Path) -> Path:
    """`random_model` (a tiny random Qwen2 folder) programmed with RULES, saved with its tokenizer in `dest`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(random_model)
    model = AutoModelForCausalLM.from_pretrained(random_model)
    program_bigram(model, tokenizer, RULES, DEFAULT_NEXT)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest
