"""Unit tests of reward.scoring: normalisation, EM / SubEM / F1, answer extraction, format check, rewards."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from reward.scoring import (
    FormatCheck,
    FormatScores,
    ScoreKind,
    _blocks,
    answer_in_text,
    check_format,
    em,
    extract_answer,
    f1,
    format_reward,
    is_valid_format,
    normalize_answer,
    retrieval_hit,
    score,
    subem,
)

# --------------------------------------------------------------------------------------------------------------
# normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("  New   York\tCity\n", "new york city"),
        ("The Beatles", "beatles"),
        ("a cat and an owl", "cat and owl"),
        ("Theory of the Anthem", "theory of anthem"),  # articles only as whole words
        ("Hello, World!", "hello world"),
        ("U.S.A.", "usa"),
        ("rock-'n'-roll", "rocknroll"),
        ("the-end", "theend"),  # punctuation goes first, so no article is left to drop
        ("A", ""),
        ("", ""),
        ("!!!", ""),
        ("Café Déjà Vu", "café déjà vu"),  # unicode letters are lowercased, accents kept
        ("«Tokyo»", "«tokyo»"),  # only ASCII punctuation is removed
        ("thé", "thé"),  # \b is unicode-aware: "the" followed by a letter is no article
        ("北京 the 上海", "北京 上海"),
        ("ΑΘΉΝΑ", "αθήνα"),
        ("one\u00a0two\u2003three", "one two three"),  # unicode whitespace collapses too
        ("1,000,000", "1000000"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# --------------------------------------------------------------------------------------------------------------
# em / subem / f1


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("Paris", "paris", 1.0),
        ("The Eiffel Tower.", ["eiffel tower"], 1.0),
        ("London", ["Paris", "paris, france"], 0.0),
        ("paris france", ["Paris", "Paris, France"], 1.0),  # any gold may match
        ("Paris", [], 0.0),
        ("Paris", ("Lyon", "Paris"), 1.0),  # any iterable of strings
        ("1984", [1984], 1.0),  # non-string golds are stringified
        ("naïve", "naive", 0.0),  # accents are not stripped
        ("Paris is the capital", "Paris", 0.0),  # exact, not contained
        ("", "", 1.0),
        ("the", "an", 1.0),  # both normalise to empty
    ],
)
def test_em(prediction: str, golds: object, expected: float) -> None:
    assert em(prediction, golds) == expected


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("Paris is the capital of France", "paris", 1.0),
        ("The answer: New York City", ["new york"], 1.0),
        ("London", ["Paris"], 0.0),
        ("Par", "Paris", 0.0),  # the gold must sit inside the prediction, not the reverse
        ("anything at all", "the", 0.0),  # an empty gold matches only an empty prediction
        ("the", "a", 1.0),
        ("Paris", [], 0.0),
    ],
)
def test_subem(prediction: str, golds: object, expected: float) -> None:
    assert subem(prediction, golds) == expected


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("Paris", "paris", 1.0),
        ("London", "Paris", 0.0),
        ("new york city", "New York", 0.8),  # p=2/3, r=1
        ("york", "new york", 2 / 3),  # p=1, r=1/2
        ("new york", ["york", "New York!"], 1.0),  # best over golds
        ("a b c", "b c d", 0.8),  # "a" is an article, so pred = "b c": p=1, r=2/3
        ("x x y", "x y y", 2 / 3),  # bag of tokens: overlap counts multiplicity
        ("", "Paris", 0.0),
        ("Paris", "the", 0.0),
        ("the", "an", 1.0),  # both empty after normalisation
        ("Paris", [], 0.0),
    ],
)
def test_f1(prediction: str, golds: object, expected: float) -> None:
    assert f1(prediction, golds) == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------------------
# extract_answer


@pytest.mark.parametrize(
    ("text", "min_blocks", "expected"),
    [
        ("<answer>Paris</answer>", 1, "Paris"),
        ("<answer>  Paris \n</answer>", 1, "Paris"),
        ("<answer>first</answer> then <answer>second</answer>", 1, "second"),
        ("<answer>a</answer><answer>b</answer><answer> c </answer>", 1, "c"),
        ("<answer>New\nYork</answer>", 1, "New\nYork"),  # dotall
        ("no block here", 1, None),
        ("", 1, None),
        ("<answer>unclosed", 1, None),
        ("unopened</answer>", 1, None),
        ("<answer></answer>", 1, ""),
        ("<Answer>Paris</Answer>", 1, None),  # tags are case-sensitive
        ("<answer>a<answer>b</answer>", 1, "a<answer>b"),  # lazy match from the first opener
        ("<answer>only one</answer>", 2, None),  # the reference prompt+response convention
        ("<answer>example</answer> ... <answer>real</answer>", 2, "real"),
    ],
)
def test_extract_answer(text: str, min_blocks: int, expected: str | None) -> None:
    assert extract_answer(text, min_blocks=min_blocks) == expected


def test_extract_answer_rejects_min_blocks_below_one() -> None:
    with pytest.raises(ValueError, match="min_blocks"):
        extract_answer("<answer>x</answer>", min_blocks=0)


# --------------------------------------------------------------------------------------------------------------
# check_format / is_valid_format

ONE_HOP = (
    "<think>I should look this up.</think>\n<search>capital of France</search>\n\n"
    "<information>Doc 1(Title: Paris) Paris is the capital of France.</information>\n\n"
    "<think>It is Paris.</think>\n<answer>Paris</answer>"
)


@pytest.mark.parametrize(
    "response",
    [
        "<think>easy</think><answer>Paris</answer>",
        "  <think>easy</think>\n\n<answer>Paris</answer>\n",
        ONE_HOP,
        ONE_HOP.replace("<answer>", "<search>q2</search><information>d</information><think>t</think><answer>"),
        "<think></think><answer></answer>",
        "<think>multi\nline <b>html</b> reasoning</think><answer>x</answer>",  # non-tag markup is text
    ],
)
def test_valid_format(response: str) -> None:
    check = check_format(response)
    assert check == FormatCheck(True, "ok")
    assert bool(check)
    assert is_valid_format(response)


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("", "no <think>"),
        ("Paris", "text 'Paris'"),
        ("<answer>Paris</answer>", "found <answer>"),  # a leading <think> is required
        ("<search>q</search><information>d</information><think>t</think><answer>a</answer>", "found <search>"),
        ("I think <think>t</think><answer>a</answer>", "text 'I think'"),
        ("<think>t</think> so <answer>a</answer>", "text 'so'"),
        ("<think>t</think><answer>a</answer> extra", "text 'extra'"),
        ("<think>t</think><answer>a</answer><answer>b</answer>", "found <answer>"),  # several answers
        ("<think>t</think><answer>a", "unclosed <answer>"),
        ("<think>t", "unclosed <think>"),
        ("<think>t</think><search>q</search><information>d", "unclosed <information>"),
        ("<think>t <search>q</search></think><answer>a</answer>", "found <search>"),  # nested
        ("<think>t</think><answer>a <think>x</think></answer>", "found <think>"),  # nested in answer
        ("</think><answer>a</answer>", "found </think>"),  # closing before opening
        ("<think>t</think><answer>a</think>", "found </think>"),  # mismatched close
        ("<think>t</think><search>q</search><think>t</think><answer>a</answer>", "found <think>"),  # no info
        ("<think>t</think><information>d</information><answer>a</answer>", "found <information>"),
        (
            "<think>t</think><search>q</search><information>d</information><answer>a</answer>",
            "found <answer>",  # a think must follow the information
        ),
        ("<think>t</think><think>u</think><answer>a</answer>", "found <think>"),
        ("<think>t</think>", "no <answer>"),
        ("<Think>t</Think><answer>a</answer>", "text '<Think>t</Think>'"),  # case-sensitive tags
    ],
)
def test_invalid_format(response: str, reason: str) -> None:
    check = check_format(response)
    assert not check.valid
    assert not check
    assert reason in check.reason
    assert not is_valid_format(response)


@pytest.mark.parametrize(
    ("response", "valid"),
    [
        ("<think>t</think>", True),
        ("<think>t</think><search>q</search>", True),
        ("<think>t</think><search>q</search><information>d</information>", True),
        ("<think>t</think><answer>a</answer>", True),
        ("", False),
        ("   ", False),
        ("<think>t", False),
        ("<think>t</think> trailing words", False),
        ("<search>q</search>", False),
    ],
)
def test_format_without_required_answer(response: str, valid: bool) -> None:
    assert check_format(response, require_answer=False).valid is valid


# --------------------------------------------------------------------------------------------------------------
# retrieval_hit


@pytest.mark.parametrize(
    ("response", "golds", "expected"),
    [
        (ONE_HOP, "Paris", True),
        (ONE_HOP, ["Lyon", "capital of FRANCE!"], True),
        (ONE_HOP, "Lyon", False),
        ("<think>Paris</think><answer>Paris</answer>", "Paris", False),  # only <information> counts
        ("<information>Doc 1(Title: x) The Focus group</information>", "US", False),  # whole words only
        ("<information>Doc 1 the U.S. army</information>", "US", True),
        ("<information>a</information><information>b Tōkyō c</information>", "tōkyō", True),
        ("<information>Paris", "Paris", False),  # unclosed block
        ("<information>anything</information>", "the", False),  # empty gold never hits
        ("<information>Paris</information>", [], False),
    ],
)
def test_retrieval_hit(response: str, golds: object, expected: bool) -> None:
    assert retrieval_hit(response, golds) is expected


@pytest.mark.parametrize(
    ("text", "golds", "expected"),
    [
        ('"Paris"\nParis is the capital of France.', ["Lyon", "capital of FRANCE"], True),
        ("The Focus group", "US", False),
        ("the U.S. army", "US", True),
        ("anything", ["the", ""], False),
    ],
)
def test_answer_in_text_matches_normalised_whole_words(text: str, golds: object, expected: bool) -> None:
    assert answer_in_text(text, golds) is expected


# --------------------------------------------------------------------------------------------------------------
# format_reward and FormatScores

BAD_CORRECT = "<answer>Paris</answer>"  # no leading think
BAD_WRONG = "<answer>Lyon</answer>"
VALID_WRONG = ONE_HOP.replace("<answer>Paris", "<answer>Lyon")
VALID_NO_ANSWER = "<think>t</think><search>q</search><information>Paris is nice</information>"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (ONE_HOP, 1.0),
        (BAD_CORRECT, 0.8),
        (ONE_HOP + " trailing", 0.8),
        (VALID_WRONG, 0.2),
        (BAD_WRONG, 0.1),
        (VALID_NO_ANSWER, 0.2),
        ("<think>t</think>", 0.2),
        ("", 0.0),
        ("just text", 0.0),
        ("<think>t</think><answer>Paris", 0.0),  # unclosed answer: no answer, bad structure
    ],
)
def test_format_reward_defaults(response: str, expected: float) -> None:
    assert format_reward(response, ["Paris"]) == pytest.approx(expected)
    assert score(response, ["Paris"], "em_format") == pytest.approx(expected)


CUSTOM = FormatScores(
    correct_valid=10.0,
    correct_invalid=8.0,
    wrong_valid=2.0,
    wrong_invalid=1.0,
    no_answer_valid=3.0,
    no_answer_invalid=-1.0,
    retrieval_bonus=0.5,
)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (ONE_HOP, 10.0),
        (BAD_CORRECT, 8.0),
        (VALID_WRONG, 2.5),  # retrieved passages contain "Paris": bonus
        ("<think>t</think><answer>Lyon</answer>", 2.0),  # nothing retrieved: no bonus
        (BAD_WRONG, 1.0),
        (VALID_NO_ANSWER, 3.5),
        ("<think>t</think>", 3.0),
        ("", -1.0),
    ],
)
def test_format_reward_custom_scores(response: str, expected: float) -> None:
    assert format_reward(response, "Paris", CUSTOM) == pytest.approx(expected)
    assert score(response, "Paris", ScoreKind.EM_FORMAT, CUSTOM) == pytest.approx(expected)


def test_format_scores_defaults_and_frozen() -> None:
    s = FormatScores()
    assert (s.correct_valid, s.correct_invalid, s.wrong_valid, s.wrong_invalid) == (1.0, 0.8, 0.2, 0.1)
    assert (s.no_answer_valid, s.no_answer_invalid, s.retrieval_bonus) == (0.2, 0.0, 0.0)
    with pytest.raises(ValidationError, match="frozen"):
        s.correct_valid = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.0", None, True])
def test_format_scores_reject_non_finite(bad: object) -> None:
    with pytest.raises(ValueError, match="wrong_valid"):
        FormatScores(wrong_valid=bad)  # type: ignore[arg-type]


def test_format_scores_match_contract_field_names() -> None:
    contracts = pytest.importorskip("services.contracts")
    cfg = contracts.FormatScoreConfig(wrong_valid=0.3)
    assert FormatScores(**cfg.model_dump()).wrong_valid == 0.3


# --------------------------------------------------------------------------------------------------------------
# score


@pytest.mark.parametrize(
    ("response", "golds", "kind", "expected"),
    [
        (ONE_HOP, "Paris", "em", 1.0),
        (ONE_HOP, "Lyon", "em", 0.0),
        (BAD_CORRECT, "Paris", "em", 1.0),  # em ignores structure
        ("<think>t</think><answer>New York City</answer>", "New York", "em", 0.0),
        ("<think>t</think><answer>New York City</answer>", "New York", "f1", 0.8),
        ("<think>t</think><answer>New York City</answer>", "New York", ScoreKind.F1, 0.8),
        ("<answer>Lyon</answer> <answer>Paris</answer>", "Paris", "em", 1.0),  # last block wins
        ("<answer>Paris</answer> <answer>Lyon</answer>", "Paris", "em", 0.0),
        ("Paris", "Paris", "em", 0.0),  # no block, no reward
        ("Paris", "Paris", "f1", 0.0),
        ("<think>Paris</think>", "Paris", "f1", 0.0),
        ("<answer>Paris</answer>", ["Lyon", "paris"], ScoreKind.EM, 1.0),
    ],
)
def test_score(response: str, golds: object, kind: str, expected: float) -> None:
    assert score(response, golds, kind) == pytest.approx(expected)


def test_score_default_kind_is_em() -> None:
    assert score("<answer>New York City</answer>", "New York") == 0.0
    assert score("<answer>new york</answer>", "New York") == 1.0


@pytest.mark.parametrize("kind", ["EM", "exact", "", "em_fmt"])
def test_score_unknown_kind(kind: str) -> None:
    with pytest.raises(ValueError, match=r"allowed kinds: em, f1, em_format") as info:
        score(ONE_HOP, "Paris", kind)
    assert repr(kind) in str(info.value)


# --------------------------------------------------------------------------------------------------------------
# properties

_WORD = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=8)
_PHRASE = st.lists(_WORD, min_size=1, max_size=5)


@given(st.text())
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@given(st.text())
def test_normalized_form_has_no_punctuation_articles_or_extra_space(text: str) -> None:
    norm = normalize_answer(text)
    assert not set(norm) & set(string.punctuation)
    assert not {"a", "an", "the"} & set(norm.split())
    assert norm == norm.strip() and "  " not in norm


@given(_PHRASE, st.data())
def test_em_invariant_to_case_punctuation_and_articles(words: list[str], data: st.DataObject) -> None:
    gold = " ".join(words)
    perturbed: list[str] = []
    for word in words:
        if data.draw(st.booleans(), label="article before"):
            perturbed.append(data.draw(st.sampled_from(["a", "an", "the", "A", "An", "The", "THE"])))
        chars = [c.upper() if data.draw(st.booleans(), label="upper") else c.lower() for c in word]
        cut = data.draw(st.integers(0, len(chars)), label="punctuation position")
        punct = data.draw(st.text(alphabet=string.punctuation, max_size=3), label="punctuation")
        perturbed.append("".join(chars[:cut]) + punct + "".join(chars[cut:]))
    prediction = data.draw(st.sampled_from([" ", "  ", "\t", "\n"])).join(perturbed)
    assert em(prediction, gold) == 1.0
    assert em(gold, prediction) == 1.0
    assert f1(prediction, gold) == 1.0
    assert subem(prediction, gold) == 1.0


@given(_PHRASE, _WORD)
def test_em_detects_an_extra_word(words: list[str], extra: str) -> None:
    gold = " ".join(words)
    assume(normalize_answer(gold))
    prediction = f"{gold} {extra}"
    if extra.lower() in {"a", "an", "the"}:
        assert em(prediction, gold) == 1.0
    else:
        assert em(prediction, gold) == 0.0
        assert subem(prediction, gold) == 1.0
        assert 0.0 < f1(prediction, gold) < 1.0


@given(st.text(), st.lists(st.text(), max_size=4))
def test_metrics_are_bounded_and_consistent(prediction: str, golds: list[str]) -> None:
    e, s, f = em(prediction, golds), subem(prediction, golds), f1(prediction, golds)
    assert e in (0.0, 1.0) and s in (0.0, 1.0)
    assert 0.0 <= f <= 1.0
    if e == 1.0:
        assert s == 1.0 and f == 1.0


@given(st.text(), st.sampled_from(list(ScoreKind)))
def test_score_is_bounded_for_any_text(text: str, kind: ScoreKind) -> None:
    value = score(text, ["Paris"], kind)
    assert 0.0 <= value <= 1.0


BLOCK_TEXT = st.lists(
    st.sampled_from(["<answer>", "</answer>", "<information>", "</information>", "a", " b\n", "<", ">", "/"])
).map("".join)


@given(BLOCK_TEXT)
def test_blocks_are_read_as_the_lazy_regex_reads_them(text: str) -> None:
    for tag in ("answer", "information"):
        assert _blocks(text, tag) == re.findall(f"<{tag}>(.*?)</{tag}>", text, re.DOTALL)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["em", "f1", "em_format"])
def test_degenerate_text_is_scored_in_linear_time(kind: str) -> None:
    """Tags opened thousands of times and never closed (1.5 MB; a quadratic scan takes minutes)."""
    scores = FormatScores(retrieval_bonus=0.1)
    answer_flood = "<think>x</think>" + "<answer>" * 100_000
    information_flood = "<think>x</think><search>q</search>" + "<information>" * 100_000
    assert score(answer_flood, ["x"], kind, scores) == 0.0
    assert score(information_flood, ["x"], kind, scores) == 0.0
    assert not retrieval_hit(information_flood + "x", ["x"])
    closed = "<think>x</think>" + "<answer>" * 100_000 + "paris</answer>"
    assert extract_answer(closed) == "<answer>" * 99_999 + "paris"
