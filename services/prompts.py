"""The episode's opening: the prompt, and what the environment writes at the start of every model turn. Our wording.

Two styles (`RolloutConfig.prompt_style`):
- `instruct`: one user turn that explains the tags, then the question (the reference's kind of prompt, for
  models that follow instructions well). Turns start with nothing inserted.
- `few_shot`: the rules as a system turn, then three worked examples as earlier chat turns (a made-up question,
  a search, its results, an answer), then the question; the environment opens every model turn with `<think>`
  (the agent's turn prefix, inserted and never trained on). Small models copy earlier turns far better than
  they follow instructions: untrained SmolLM2-135M-Instruct at temperature 1 writes a valid first action in
  55-68% of its episodes with it, and in under 1% with `instruct` (`python -m bench.prompts`).
- `one_shot`: `few_shot` with its first worked example only, ~200 tokens instead of ~450: prompt tokens dominate
  the cost of a training update, and one example suffices for the generated demo task.

The chat template is applied when the tokenizer has one (instruct models); base models get plain text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

PromptStyle = Literal["instruct", "few_shot", "one_shot"]
PROMPT_STYLES: tuple[PromptStyle, ...] = ("instruct", "few_shot", "one_shot")

INSTRUCTION = (
    "Answer the question below. Reason step by step between <think> and </think> whenever you need to. "
    "If a fact is missing, search for it: put a query between <search> and </search>, and the search results "
    "will be shown to you between <information> and </information>. You may search as many times as you like. "
    "Once you know the answer, write it between <answer> and </answer> with no explanation, "
    "for example <answer> Marie Curie </answer>."
)

RULES = (
    "Answer the question. First think briefly between <think> and </think>. Then either search, with a query "
    "between <search> and </search> (results come back between <information> and </information>), or give the "
    "final answer, a few words between <answer> and </answer>."
)


def _worked(need: str, query: str, title: str, passage: str, answer: str) -> str:
    return (
        f"<think> I need to find {need}. </think>\n<search> {query} </search>\n\n"
        f'<information>Doc 1(Title: "{title}") {passage}</information>\n\n'
        f"<think> The search says {answer}. </think>\n<answer> {answer} </answer>"
    )


# Made-up people and places, so an example never leaks a real answer.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("In which town was the clockmaker Alvera Quint born?",
     _worked("where Alvera Quint was born", "Alvera Quint birthplace", "Alvera Quint",
             "Alvera Quint was a clockmaker born in Westmarch.", "Westmarch")),
    ("Which river flows through Dunhollow?",
     _worked("the river of Dunhollow", "Dunhollow river", "Dunhollow",
             "Dunhollow is a market town on the river Pell.", "Pell")),
    ("What instrument did Borin Maddox play?",
     _worked("the instrument of Borin Maddox", "Borin Maddox instrument", "Borin Maddox",
             "Borin Maddox was a folk musician who played the lute.", "lute")),
)  # fmt: skip

TURN_PREFIXES: dict[PromptStyle, str] = {"instruct": "", "few_shot": "<think>", "one_shot": "<think>"}


def normalize_question(question: str) -> str:
    """Strip the question and end it with a question mark."""
    question = question.strip()
    if not question:
        raise ValueError("question is empty")
    return question if question.endswith("?") else question + "?"


def _check_style(style: str) -> PromptStyle:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    return style  # type: ignore[return-value]


def prompt_text(question: str) -> str:
    """The user message of the `instruct` style: the instruction, then the question."""
    return f"{INSTRUCTION}\nQuestion: {normalize_question(question)}\n"


def prompt_messages(question: str, style: PromptStyle = "instruct") -> list[dict[str, str]]:
    """The prompt as chat messages."""
    if _check_style(style) == "instruct":
        return [{"role": "user", "content": prompt_text(question)}]
    messages = [{"role": "system", "content": RULES}]
    for example_question, worked in EXAMPLES[: 1 if style == "one_shot" else None]:
        messages += [{"role": "user", "content": f"Question: {example_question}"},
                     {"role": "assistant", "content": worked}]  # fmt: skip
    return [*messages, {"role": "user", "content": f"Question: {normalize_question(question)}"}]


def turn_prefix(style: PromptStyle = "instruct") -> str:
    """What the environment writes before every model turn of this style (inserted, never trained on)."""
    return TURN_PREFIXES[_check_style(style)]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, question: str, style: PromptStyle = "instruct") -> str:
    """The full prompt as text: the chat template with a generation prompt when the tokenizer has one, else the
    messages' contents one after another."""
    messages = prompt_messages(question, style)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(message["content"] for message in messages) + ("\n" if style != "instruct" else "")


def build_prompt_ids(
    tokenizer: Any, question: str, max_prompt_tokens: int | None = None, style: PromptStyle = "instruct"
) -> list[int]:
    """The prompt token ids, capped at the newest `max_prompt_tokens` (the question sits at the end)."""
    text = render_prompt(tokenizer, question, style)
    # A chat template already holds every special token the model expects.
    ids = [int(t) for t in tokenizer.encode(text, add_special_tokens=not has_chat_template(tokenizer))]
    if max_prompt_tokens is not None:
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        ids = ids[-max_prompt_tokens:]
    return ids


def build_turn_prefix_ids(tokenizer: Any, style: PromptStyle = "instruct") -> list[int]:
    """The token ids of `turn_prefix(style)` (none for a style without one)."""
    prefix = turn_prefix(style)
    return [int(t) for t in tokenizer.encode(prefix, add_special_tokens=False)] if prefix else []


def reference_prompt_text(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """A Search-R1 row's own chat prompt as the reference renders it: the chat template with a generation prompt,
    or without a template the first message's content alone."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return messages[0]["content"]


def build_reference_prompt_ids(
    tokenizer: Any, messages: Sequence[dict[str, str]], max_prompt_tokens: int | None = None
) -> list[int]:
    """The token ids of `reference_prompt_text` (no special tokens added, as the reference tokenizes), capped at
    the newest `max_prompt_tokens`."""
    ids = [int(t) for t in tokenizer.encode(reference_prompt_text(tokenizer, messages), add_special_tokens=False)]
    return ids[-max_prompt_tokens:] if max_prompt_tokens is not None else ids
