"""Pure scoring of Search-R1 responses: answer extraction, normalisation, EM / F1 and a format-aware reward.

Everything here works on plain strings with no I/O, so the reward worker, the evaluator and the tests share
one definition of what a correct answer and a well-formed response are.

Conventions (see shared/notes/SEARCH-R1.md, "Reward"):
- Answers are compared after SQuAD normalisation (:func:`normalize_answer`).
- The prediction is the LAST ``<answer>...</answer>`` block. We score the response alone, so one block is
  enough (``min_blocks=1``); ``min_blocks=2`` reproduces the reference, which scores prompt plus response and
  whose prompt already contains an example answer block.
- ``golden_answers`` is one string or any iterable of strings (a list, a tuple, a numpy array from parquet);
  non-string items are converted with ``str``.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from reward.grammar import DONE, IN_BLOCK, TRANSITIONS
from reward.reference import reference_score
from services.contracts import FormatScoreConfig

__all__ = [
    "FormatCheck",
    "FormatScores",
    "ScoreKind",
    "answer_in_text",
    "check_format",
    "em",
    "extract_answer",
    "f1",
    "format_reward",
    "is_valid_format",
    "normalize_answer",
    "reference_score",
    "retrieval_hit",
    "score",
    "subem",
]

GoldenAnswers = str | Iterable[str]

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLE = re.compile(r"\b(a|an|the)\b")
_TAG = re.compile(r"</?(?:think|search|information|answer)>")


# --------------------------------------------------------------------------------------------------------------
# Normalisation and answer metrics


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop ASCII punctuation, blank out articles, collapse whitespace."""
    lowered = text.lower().translate(_DROP_PUNCTUATION)
    return " ".join(_ARTICLE.sub(" ", lowered).split())


def _golds(golden_answers: GoldenAnswers) -> list[str]:
    """The gold answers as a list of strings, whatever container they arrived in."""
    if isinstance(golden_answers, str):
        return [golden_answers]
    return [g if isinstance(g, str) else str(g) for g in golden_answers]


def em(prediction: str, golden_answers: GoldenAnswers) -> float:
    """1.0 when the normalised prediction equals some normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return 1.0 if any(pred == normalize_answer(g) for g in _golds(golden_answers)) else 0.0


def subem(prediction: str, golden_answers: GoldenAnswers) -> float:
    """1.0 when some normalised gold answer is a substring of the normalised prediction, else 0.0.

    A gold answer that normalises to the empty string would be a substring of everything; it only matches a
    prediction that is empty after normalisation too.
    """
    pred = normalize_answer(prediction)
    for gold in _golds(golden_answers):
        norm = normalize_answer(gold)
        if (norm in pred) if norm else not pred:
            return 1.0
    return 0.0


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """Harmonic mean of token precision and recall (bag of tokens); two empty lists agree fully."""
    if not pred_tokens or not gold_tokens:
        return 1.0 if pred_tokens == gold_tokens else 0.0
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golden_answers: GoldenAnswers) -> float:
    """Token-level F1 of the normalised prediction, the best over the gold answers (0.0 with no golds)."""
    pred_tokens = normalize_answer(prediction).split()
    return max(
        (_token_f1(pred_tokens, normalize_answer(g).split()) for g in _golds(golden_answers)),
        default=0.0,
    )


# --------------------------------------------------------------------------------------------------------------
# Reading a response


def _blocks(text: str, tag: str) -> list[str]:
    """The contents of the ``<tag>...</tag>`` blocks, as ``re.findall(r"<tag>(.*?)</tag>", text, re.DOTALL)``
    finds them, in one linear pass: that regex rescans the rest of the text from every unclosed opening tag,
    which is quadratic on degenerate text (thousands of ``<answer>`` and no ``</answer>``)."""
    opening, closing = f"<{tag}>", f"</{tag}>"
    blocks: list[str] = []
    pos = 0
    while (start := text.find(opening, pos)) >= 0:
        end = text.find(closing, start + len(opening))
        if end < 0:  # no closing tag after this opening one, so none after any later one either
            break
        blocks.append(text[start + len(opening) : end])
        pos = end + len(closing)
    return blocks


def extract_answer(text: str, min_blocks: int = 1) -> str | None:
    """The stripped content of the last ``<answer>...</answer>`` block, or None with fewer than min_blocks.

    Blocks are matched lazily across lines, so ``<answer>a<answer>b</answer>`` yields ``a<answer>b``.
    """
    if min_blocks < 1:
        raise ValueError(f"min_blocks must be at least 1, got {min_blocks}")
    blocks = _blocks(text, "answer")
    if len(blocks) < min_blocks:
        return None
    return blocks[-1].strip()


def answer_in_text(text: str, golden_answers: GoldenAnswers) -> bool:
    """True when some normalised gold answer occurs, as whole words, in the normalised text.

    Whole-word matching (rather than a raw substring) keeps short answers such as "us" from hitting "focus".
    Golds that normalise to nothing never hit. This is also the "answer recall" test of retrieval benchmarks.
    """
    padded = f" {normalize_answer(text)} "
    return any(f" {gold} " in padded for g in _golds(golden_answers) if (gold := normalize_answer(g)))


def retrieval_hit(response: str, golden_answers: GoldenAnswers) -> bool:
    """True when a gold answer occurs (see `answer_in_text`) in the text of an ``<information>`` block."""
    return any(answer_in_text(block, golden_answers) for block in _blocks(response, "information"))


# --------------------------------------------------------------------------------------------------------------
# Format validation


@dataclass(frozen=True)
class FormatCheck:
    """The verdict on a response's tag structure; ``reason`` says what broke it ("ok" when valid)."""

    valid: bool
    reason: str

    def __bool__(self) -> bool:
        return self.valid


def _expected(state: str) -> str:
    return " or ".join(TRANSITIONS[state]) or "the end of the response"


def check_format(response: str, *, require_answer: bool = True) -> FormatCheck:
    """Check the tag structure of a response (the generated part only, no chat-template markers).

    Valid means: tags are balanced and never nested, they follow think -> (search -> information -> think)*
    -> answer, and only whitespace sits between blocks (before the first and after the last included). A
    ``<think>`` block is required first, as in the reference: the prompt asks the model to reason before it
    acts. Tags are case-sensitive; text inside a block is free but may not contain another tag.

    With ``require_answer=False`` a response that stops cleanly between blocks without answering (say, when
    the turn budget ran out) is valid too; an empty or tag-less response never is.
    """
    state = "start"
    pos = 0
    for match in _TAG.finditer(response):
        gap = response[pos : match.start()]
        if state not in IN_BLOCK and gap.strip():
            return FormatCheck(False, f"text {gap.strip()[:40]!r} where {_expected(state)} was expected")
        tag = match.group(0)
        nxt = TRANSITIONS[state].get(tag)
        if nxt is None:
            return FormatCheck(False, f"found {tag} where {_expected(state)} was expected")
        state, pos = nxt, match.end()
    if state in IN_BLOCK:
        return FormatCheck(False, f"unclosed {IN_BLOCK[state]}")
    tail = response[pos:].strip()
    if tail:
        return FormatCheck(False, f"text {tail[:40]!r} where {_expected(state)} was expected")
    if state == DONE:
        return FormatCheck(True, "ok")
    if state == "start":
        return FormatCheck(False, "no <think> block")
    if require_answer:
        return FormatCheck(False, "no <answer> block at the end")
    return FormatCheck(True, "ok")


def is_valid_format(response: str) -> bool:
    """True when the response is a complete, well-formed episode ending in one answer block."""
    return check_format(response).valid


# --------------------------------------------------------------------------------------------------------------
# Rewards


# The scores are part of the job's contract (RewardConfig.format_scores); one model serves both.
FormatScores = FormatScoreConfig


def format_reward(response: str, golden_answers: GoldenAnswers, scores: FormatScores | None = None) -> float:
    """Exact match graded by structure: correct/wrong/no answer crossed with valid/invalid format.

    An answered response is judged by :func:`check_format`; one with no answer block is judged with
    ``require_answer=False``, so a clean but unfinished episode earns ``no_answer_valid``.
    """
    s = scores or FormatScores()
    answer = extract_answer(response)
    if answer is not None and em(answer, golden_answers):
        return s.correct_valid if check_format(response).valid else s.correct_invalid
    valid = check_format(response, require_answer=answer is not None).valid
    if not valid:
        return s.wrong_invalid if answer is not None else s.no_answer_invalid
    base = s.wrong_valid if answer is not None else s.no_answer_valid
    if s.retrieval_bonus and retrieval_hit(response, golden_answers):
        base += s.retrieval_bonus
    return base


class ScoreKind(StrEnum):
    """The reward kinds a job may ask for."""

    EM = "em"
    F1 = "f1"
    EM_FORMAT = "em_format"


def _kind(kind: ScoreKind | str) -> ScoreKind:
    try:
        return ScoreKind(kind)
    except ValueError:
        allowed = ", ".join(k.value for k in ScoreKind)
        raise ValueError(f"unknown reward kind {kind!r}; allowed kinds: {allowed}") from None


def score(
    trajectory_text: str,
    golden_answers: GoldenAnswers,
    kind: ScoreKind | str = ScoreKind.EM,
    scores: FormatScores | None = None,
) -> float:
    """The reward of one response (the generated text alone, so one answer block suffices).

    ``em`` and ``f1`` give 0.0 when there is no answer block; ``em_format`` is :func:`format_reward`.
    """
    chosen = _kind(kind)
    if chosen is ScoreKind.EM_FORMAT:
        return format_reward(trajectory_text, golden_answers, scores)
    answer = extract_answer(trajectory_text)
    if answer is None:
        return 0.0
    return em(answer, golden_answers) if chosen is ScoreKind.EM else f1(answer, golden_answers)
