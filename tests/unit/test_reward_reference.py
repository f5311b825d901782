"""The reference-compatibility scorer against facts read off the reference's qa_em.py / qa_em_format.py, and
against our default mode where the two must agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import REFERENCE_INSTRUCTION

from reward.reference import normalize, reference_answer, reference_format_valid
from reward.scoring import FormatScores, normalize_answer, reference_score, score
from reward.worker import score_trajectory
from services.contracts import ContractError, JobSpec, RewardConfig, Trajectory
from services.worker import PermanentError

# The reference's prompt as Qwen2.5's chat template renders it for generation.
SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"


def chat_prompt(question: str = "what is the capital of france?") -> str:
    return f"{SYSTEM}<|im_start|>user\n{REFERENCE_INSTRUCTION}{question}\n<|im_end|>\n<|im_start|>assistant\n"


def raw_prompt(question: str = "what is the capital of france?") -> str:
    """The prompt as a base model without a chat template gets it: no assistant marker."""
    return f"{REFERENCE_INSTRUCTION}{question}\n"


SEARCHED = (
    "<think> I need the capital. </think><search> capital of france </search>\n\n"
    "<information>Doc 1(Title: France) The focus of French politics is Paris.</information>\n\n"
    "<think> found it </think>"
)
KINDS = ("em", "subem", "em_format")


@pytest.mark.parametrize(
    ("solution", "golds", "expected"),
    [
        # A well-formed episode with the right answer: a match everywhere, 1 for the full format.
        (chat_prompt() + SEARCHED + "<answer> Paris </answer>", ["Paris"], (1.0, 1.0, 1.0)),
        # Wrong answer, valid format: 0, 0, and the structure score 0.2 (no gold in the information block).
        (chat_prompt() + SEARCHED + "<answer> Lyon </answer>", ["Marseille"], (0.0, 0.0, 0.2)),
        # No answer in the response: the last block is the prompt's example " Beijing ", so a question whose gold
        # is Beijing scores 1 by EM; the response stops after </think>, so the format is invalid: 1 - 0.2.
        (chat_prompt() + "<think> no idea </think>", ["Beijing"], (1.0, 1.0, 0.8)),
        # ... and a wrong "answer" in an invalid format earns the final-format score 0.1, never 0.
        (chat_prompt() + "<think> no idea </think>", ["Paris"], (0.0, 0.0, 0.1)),
        # No assistant marker (a prompt rendered without a chat template): the format is never valid, so a
        # correct answer gets 0.8 and a wrong one 0.1, however clean the response.
        (raw_prompt() + SEARCHED + "<answer> Paris </answer>", ["Paris"], (1.0, 1.0, 0.8)),
        (raw_prompt() + SEARCHED + "<answer> Lyon </answer>", ["Paris"], (0.0, 0.0, 0.1)),
        # Substring retrieval bonus: "us" is inside "focus" in the information block, so the wrong answer in a
        # valid format earns 0.2 + 0.1 (the reference's float sum).
        (chat_prompt() + SEARCHED + "<answer> Lyon </answer>", ["us"], (0.0, 0.0, 0.2 + 0.1)),
        # An <answer> in the question pairs with the response's </answer>: the last block runs from the
        # question into the response, so the right answer is read as wrong text; the format (after the
        # assistant marker) is still valid: 0.2. That text ends in "paris", so subem still matches.
        (
            chat_prompt("what does <answer> mark?") + "<think> x </think><answer> Paris </answer>",
            ["Paris"],
            (0.0, 1.0, 0.2),
        ),
        # The EOS token the reference drops from its responses, if present, is text after </answer>: invalid.
        (chat_prompt() + "<think> x </think><answer> Paris </answer><|im_end|>", ["Paris"], (1.0, 1.0, 0.8)),
        # Only one answer block in all (a prompt without the example): no answer; a valid format gets 0.2.
        ("<|im_start|>assistant\n<think> x </think><answer> Paris </answer>", ["Paris"], (0.0, 0.0, 0.2)),
        # subem is a substring test; a gold that normalises to "" is inside every answer, and inside every
        # information block too (the prompt's " and " one): the retrieval bonus is added.
        (chat_prompt() + "<think> x </think><answer> Paris, France </answer>", ["France"], (0.0, 1.0, 0.2)),
        (chat_prompt() + "<think> x </think><answer> Paris </answer>", ["the"], (0.0, 1.0, 0.2 + 0.1)),
        # Golds as parquet stores them (a numpy array), or a lone string.
        (chat_prompt() + "<think> x </think><answer> paris. </answer>", np.array(["Paris", "x"]), (1.0, 1.0, 1.0)),
        (chat_prompt() + "<think> x </think><answer> paris </answer>", "Paris", (1.0, 1.0, 1.0)),
    ],
)
def test_reference_scores(solution: str, golds, expected: tuple[float, float, float]) -> None:  # type: ignore[no-untyped-def]
    assert tuple(reference_score(solution, golds, kind) for kind in KINDS) == expected


def test_format_scores_and_the_retrieval_bonus_follow_the_arguments() -> None:
    wrong = chat_prompt() + SEARCHED + "<answer> Lyon </answer>"
    assert reference_score(wrong, ["us"], "em_format", 0.3, 0.05, 0.0) == 0.3
    assert reference_score(wrong, ["us"], "em_format", 0.3, 0.05, 0.25) == 0.3 + 0.25
    assert reference_score(raw_prompt() + "<answer> Lyon </answer>", ["us"], "em_format", 0.3, 0.05, 0.25) == 0.05
    # The bonus needs a valid format, and a lone string's characters are its golds there ("s" is in "focus").
    assert reference_score(raw_prompt() + SEARCHED + "<answer> Lyon </answer>", ["us"], "em_format") == 0.1
    assert reference_score(wrong, "Ms", "em_format") == 0.2 + 0.1
    with pytest.raises(ValueError, match="unknown reference reward kind"):
        reference_score(wrong, ["us"], "f1")  # type: ignore[arg-type]


def test_format_rules() -> None:
    assert reference_format_valid("x<|im_start|>assistant  \n<think>a</think>\n<answer>b</answer>\n")
    assert not reference_format_valid("<|im_start|>assistant\n<think>a</think><answer>b</answer> done")
    assert not reference_format_valid("<|im_start|>assistant\n<answer>b</answer>"), "think comes first"
    assert not reference_format_valid("<|im_start|>assistant\n<think>a</think><search>q</search><answer>b</answer>")
    # The first marker counts: an assistant turn in the prompt moves the check onto the prompt's text.
    assert not reference_format_valid("<|im_start|>assistant\nhi<|im_end|><|im_start|>assistant\n<think>a</think>"
                                      "<answer>b</answer>")  # fmt: skip
    assert reference_answer("<answer>a</answer><answer> b </answer>") == "b"
    assert reference_answer("<answer>a<answer>b</answer>") is None, "one block (lazy), so no answer"


def test_degenerate_text_is_scored_in_linear_time() -> None:
    text = "<|im_start|>assistant\n" + "<answer><information>" * 100_000 + "</answer>"
    assert reference_score(text, ["x"], "em_format") == 0.0  # one block only; tags unbalanced


# --------------------------------------------------------------------------------------------------------------
# Where the reference and our default mode must agree: the reference's chat prompt, a response holding at least
# one complete answer block and nothing that reaches into the prompt, golds that normalise to something, and
# no retrieval bonus (ours matches whole words, the reference substrings).

PIECES = ["<think>", "</think>", "<search>", "</search>", "<information>", "</information>", "<answer>",
          "</answer>", " ", "\n", "Paris", "the paris", "London", "us", "x", ".", "\u00a0"]  # fmt: skip


@st.composite
def responses(draw: st.DrawFn) -> str:
    if draw(st.booleans()):  # well-formed episodes, sometimes with one piece replaced
        segments = ["<think>", draw(st.sampled_from(["x", "Paris", " "])), "</think>"]
        for _ in range(draw(st.integers(0, 2))):
            segments += ["<search>", "q", "</search>", "\n\n<information>", draw(st.sampled_from(["Paris", "y"])),
                         "</information>\n\n", "<think>", "y", "</think>"]  # fmt: skip
        segments += ["<answer>", draw(st.sampled_from(["Paris", "London", "the paris", ""])), "</answer>"]
        if draw(st.booleans()):
            segments[draw(st.integers(0, len(segments) - 1))] = draw(st.sampled_from(PIECES))
        return "".join(segments)
    return "".join(draw(st.lists(st.sampled_from(PIECES), max_size=20)))


@settings(max_examples=400, deadline=None)
@given(responses(), st.sampled_from([["Paris"], ["London", "paris"], ["us"], ["Lyon"]]))
def test_the_modes_agree_on_answered_responses(response: str, golds: list[str]) -> None:
    if reference_answer("<answer>example</answer>" + response) is None:  # no complete answer block of its own
        return
    solution = chat_prompt() + response
    assert reference_score(solution, golds, "em") == score(response, golds, "em")
    assert reference_score(solution, golds, "em_format", retrieval_score=0.0) == score(response, golds, "em_format")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_the_normalisations_agree(text: str) -> None:
    assert normalize(text) == normalize_answer(text)


# --------------------------------------------------------------------------------------------------------------
# The reward mode: RewardConfig.compat = "reference", end to end through the reward worker.


def trajectory(reward: dict, prompt_text: str, response_text: str) -> Trajectory:  # type: ignore[type-arg]
    return Trajectory(
        job_id="j", request_id="r", prompt_uid="u", prompt_ids=np.array([1]), response_ids=np.array([2]),
        loss_mask=np.array([1], dtype=np.uint8), logprobs=np.zeros(1), prompt_text=prompt_text,
        response_text=response_text, golden_answers=["Beijing"], reward=RewardConfig.model_validate(reward),
    )  # fmt: skip


@pytest.mark.parametrize(("kind", "reference", "ours"), [("em", 1.0, 0.0), ("em_format", 0.8, 0.2)])
def test_the_worker_scores_prompt_and_response_as_the_reference(kind: str, reference: float, ours: float) -> None:
    # No answer in the response: the reference reads the prompt's example answer, ours finds none (and grades
    # a clean unfinished episode no_answer_valid).
    prompt, response = chat_prompt(), "<think> no idea </think>"
    scored = score_trajectory(trajectory({"kind": kind, "compat": "reference"}, prompt, response))
    assert (scored.reward, scored.extracted_answer, scored.format_valid) == (reference, "Beijing", False)
    assert score_trajectory(trajectory({"kind": kind}, prompt, response)).reward == ours
    bonus = {"kind": "em_format", "compat": "reference", "format_scores": {"retrieval_bonus": 0.1}}
    searched = score_trajectory(trajectory(bonus, prompt, SEARCHED + "<answer> Lyon </answer>"))
    assert searched.format_valid and not searched.retrieval_hit and searched.reward == 0.2
    with pytest.raises(PermanentError, match="prompt_text"):
        score_trajectory(trajectory({"kind": kind, "compat": "reference"}, "", response))


def test_the_contract_refuses_what_the_reference_cannot_score() -> None:
    assert RewardConfig().compat == "ours"
    base = {"model": "m", "algorithm": {"name": "grpo"}, "data": {"train": [{"path": "x"}]}}
    for reward, message in [
        ({"kind": "f1", "compat": "reference"}, "the reference has no f1 reward"),
        ({"kind": "em_format", "compat": "reference", "format_scores": {"correct_invalid": 0.5}}, "correct_invalid"),
        ({"compat": "theirs"}, "compat"),
    ]:
        with pytest.raises(ContractError, match=message):
            JobSpec.parse({**base, "reward": reward})
    derived = {"wrong_valid": 0.3, "correct_invalid": 0.7, "no_answer_valid": 0.3}
    spec = JobSpec.parse({**base, "reward": {"kind": "em_format", "compat": "reference", "format_scores": derived}})
    assert spec.reward.format_scores == FormatScores(**derived)
