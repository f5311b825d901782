"""The reference's reward (PeterGriffinJin/Search-R1 `qa_em.py`, `qa_em_format.py`), quirks included.

It scores `solution_str`: the prompt and the response decoded together, special tokens kept, as the
reference's reward manager builds it. Written out here on its own, apart from `reward.scoring`, so that our
default mode can keep its fixes while this one stays the reference's:
- The answer is the last `<answer>` block of the whole text, and only when there are at least two: the
  reference's prompt holds two (`inside <answer> and </answer>` and `For example, <answer> Beijing </answer>`),
  so a response with no answer is scored on the example's "Beijing", and an `<answer>` in the question pairs
  with the response's `</answer>`.
- The format is checked on what follows the first `<|im_start|>assistant` marker; a text with no such marker
  (a prompt rendered without a chat template) is never well-formed. The tag grammar is the one our mode uses
  too (`reward.grammar`); how the text is split and where whitespace counts is the reference's.
- The retrieval bonus is a substring test over every `<information>` block of the text (the prompt's
  `between <information> and </information>` included); a gold that normalises to "" matches everything, in
  `subem` too.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from typing import Literal

from reward.grammar import DONE, IN_BLOCK, TRANSITIONS

ReferenceKind = Literal["em", "subem", "em_format"]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASSISTANT = re.compile(r"<\|im_start\|>assistant\s*")
_TAGS = ("think", "search", "information", "answer")
_SPLIT = re.compile(r"(</?(?:think|search|information|answer)>)")


def normalize(text: str) -> str:
    """Lowercase, drop ASCII punctuation, blank out the articles, collapse whitespace (in that order)."""
    kept = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", kept).split())


def _golds(golden_answers: str | Iterable[str]) -> list[str]:
    return [golden_answers] if isinstance(golden_answers, str) else [str(gold) for gold in golden_answers]


def _blocks(text: str, tag: str) -> list[str]:
    """Every `<tag>(.*?)</tag>` match (lazy, across lines). The regex runs on the text up to the last closing
    tag, where every match ends: an unclosed opening tag after it would make the scan quadratic."""
    closing = f"</{tag}>"
    end = text.rfind(closing)
    if end < 0:
        return []
    return re.findall(f"<{tag}>(.*?){closing}", text[: end + len(closing)], re.DOTALL)


def reference_answer(solution_str: str) -> str | None:
    """The stripped last `<answer>` block, or None when the text has fewer than two."""
    blocks = _blocks(solution_str, "answer")
    return blocks[-1].strip() if len(blocks) >= 2 else None


def reference_format_valid(solution_str: str) -> bool:
    """`is_valid_sequence`: the text after the first assistant marker is think (search information think)*
    answer, with nothing but whitespace around and between the blocks."""
    marker = _ASSISTANT.search(solution_str)
    if marker is None:
        return False
    content = solution_str[marker.end() :]
    if any(content.count(f"<{tag}>") != content.count(f"</{tag}>") for tag in _TAGS):
        return False
    state = "start"
    for index, part in enumerate(_SPLIT.split(content)):
        if not part.strip():
            continue
        if index % 2:  # re.split puts the captured tags at the odd places
            next_state = TRANSITIONS[state].get(part)
            if next_state is None:
                return False
            state = next_state
        elif state not in IN_BLOCK:
            return False
    return state == DONE


def reference_retrieval_hit(solution_str: str, golden_answers: str | Iterable[str]) -> bool:
    """Some normalised gold is a substring of some normalised, stripped `<information>` block of the text. Here
    alone the reference does not wrap a lone string in a list: its characters are the golds."""
    golds = [normalize(str(gold)) for gold in golden_answers]
    return any(gold in normalize(block.strip()) for block in _blocks(solution_str, "information") for gold in golds)


def _matches(answer: str, golden_answers: str | Iterable[str], substring: bool) -> bool:
    prediction = normalize(answer)
    golds = (normalize(gold) for gold in _golds(golden_answers))
    return any((gold in prediction) if substring else (gold == prediction) for gold in golds)


def reference_score(
    solution_str: str,
    golden_answers: str | Iterable[str],
    kind: ReferenceKind,
    structure_format_score: float = 0.2,
    final_format_score: float = 0.1,
    retrieval_score: float = 0.1,
) -> float:
    """The reference's reward of `solution_str` (prompt + response as it decodes them).

    `em` / `subem`: `qa_em.compute_score_em` / `compute_score_subem` as its trainer calls them (1 for a match,
    0 otherwise). `em_format`: `qa_em_format.compute_score_em`: 1 for a correct answer in a valid format,
    1 - structure for a correct one in an invalid format, structure (+ retrieval when an information block
    holds a gold) for a wrong or missing answer in a valid format, final for a wrong one in an invalid format,
    0 for no answer in an invalid format.
    """
    if kind not in ("em", "subem", "em_format"):
        raise ValueError(f"unknown reference reward kind {kind!r}; allowed: em, subem, em_format")
    answer = reference_answer(solution_str)
    if kind != "em_format":
        return float(answer is not None and _matches(answer, golden_answers, substring=kind == "subem"))
    valid = reference_format_valid(solution_str)
    if answer is not None and _matches(answer, golden_answers, substring=False):
        return 1.0 if valid else 1.0 - structure_format_score
    if valid:
        bonus = retrieval_score if reference_retrieval_hit(solution_str, golden_answers) else 0.0
        return structure_format_score + bonus
    return 0.0 if answer is None else final_format_score
