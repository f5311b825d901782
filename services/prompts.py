"""The episode's opening prompt: one user turn that explains the tags, then the question. Our own wording.

The chat template is applied when the tokenizer has one (instruct models); base models get the plain text.
"""

from __future__ import annotations

from typing import Any

INSTRUCTION = (
    "Answer the question below. Reason step by step between <think> and </think> whenever you need to. "
    "If a fact is missing, search for it: put a query between <search> and </search>, and the search results "
    "will be shown to you between <information> and </information>. You may search as many times as you like. "
    "Once you know the answer, write it between <answer> and </answer> with no explanation, "
    "for example <answer> Marie Curie </answer>."
)


def normalize_question(question: str) -> str:
    """Strip the question and end it with a question mark."""
    question = question.strip()
    if not question:
        raise ValueError("question is empty")
    return question if question.endswith("?") else question + "?"


def prompt_text(question: str) -> str:
    """The user message: the instruction, then the question."""
    return f"{INSTRUCTION}\nQuestion: {normalize_question(question)}\n"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, question: str) -> str:
    """The full prompt as text: the chat template with a generation prompt when the tokenizer has one."""
    text = prompt_text(question)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def build_prompt_ids(tokenizer: Any, question: str, max_prompt_tokens: int | None = None) -> list[int]:
    """The prompt token ids, capped at the newest `max_prompt_tokens` (the question sits at the end)."""
    if has_chat_template(tokenizer):
        # The template already holds every special token the model expects.
        ids = tokenizer.encode(render_prompt(tokenizer, question), add_special_tokens=False)
    else:
        ids = tokenizer.encode(render_prompt(tokenizer, question), add_special_tokens=True)
    ids = [int(t) for t in ids]
    if max_prompt_tokens is not None:
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        ids = ids[-max_prompt_tokens:]
    return ids
