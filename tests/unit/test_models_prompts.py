"""The opening prompt and the tiny test tokenizer; the offline model registry's name resolution."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reward.scoring import check_format, extract_answer
from rollout.agent import HFTextCodec, parse_action
from searchr1.redis_server import free_port
from services.models import (
    SMOLLM2,
    TAG_TOKENS,
    TINY_QWEN2,
    ModelNotFound,
    build_tiny_tokenizer,
    name_problem,
    registry_names,
    resolve_model,
)
from services.prompts import (
    EXAMPLES,
    INSTRUCTION,
    RULES,
    build_prompt_ids,
    build_turn_prefix_ids,
    normalize_question,
    prompt_messages,
    prompt_text,
    render_prompt,
    turn_prefix,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_question_gets_a_question_mark():
    assert normalize_question("  who wrote hamlet ") == "who wrote hamlet?"
    assert normalize_question("who wrote hamlet?") == "who wrote hamlet?"
    with pytest.raises(ValueError):
        normalize_question("   ")
    text = prompt_text("capital of france")
    assert text.startswith(INSTRUCTION) and text.endswith("Question: capital of france?\n")
    for tag in ("<search>", "</search>", "<answer>", "</answer>", "<information>", "<think>"):
        assert tag in INSTRUCTION


def test_chat_template_is_applied_when_present(tokenizer):
    rendered = render_prompt(tokenizer, "capital of france")
    assert rendered.startswith("<|im_start|>user\n" + INSTRUCTION)
    assert rendered.endswith("Question: capital of france?\n<|im_end|>\n<|im_start|>assistant\n")
    ids = build_prompt_ids(tokenizer, "capital of france")
    assert tokenizer.decode(ids, skip_special_tokens=False) == rendered
    assert build_prompt_ids(tokenizer, "capital of france", max_prompt_tokens=10) == ids[-10:]


def test_plain_text_without_a_chat_template(tokenizer):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    assert render_prompt(tokenizer, "q") == prompt_text("q")


def test_few_shot_prompt_is_rules_then_worked_examples_then_the_question(tokenizer):
    messages = prompt_messages("capital of france", "few_shot")
    assert messages[0] == {"role": "system", "content": RULES}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * len(EXAMPLES) + ["user"]
    assert messages[-1]["content"] == "Question: capital of france?"
    rendered = render_prompt(tokenizer, "capital of france", "few_shot")
    assert rendered.startswith("<|im_start|>system\n" + RULES)
    assert rendered.endswith("Question: capital of france?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(build_prompt_ids(tokenizer, "capital of france", style="few_shot")) == rendered
    assert len(build_prompt_ids(tokenizer, "q", style="few_shot")) > len(build_prompt_ids(tokenizer, "q"))


@pytest.mark.parametrize(("question", "worked"), EXAMPLES)
def test_every_worked_example_is_an_episode_the_reward_calls_valid(question: str, worked: str):
    """The examples teach exactly the format the reward pays for: think, search, information, think, answer."""
    assert check_format(worked).valid, check_format(worked).reason
    assert parse_action(worked)[0] == "search"
    answer = extract_answer(worked)
    assert answer and answer in worked.split("<information>")[1].split("</information>")[0], "found by the search"
    turns = worked.split("</information>\n\n")
    assert len(turns) == 2 and all(turn.startswith(turn_prefix("few_shot")) for turn in turns), "turns open a think"


def test_few_shot_turns_open_a_think_block_and_instruct_turns_open_nothing(tokenizer):
    assert turn_prefix("few_shot") == "<think>" and turn_prefix("instruct") == ""
    assert tokenizer.decode(build_turn_prefix_ids(tokenizer, "few_shot")) == "<think>"
    assert build_turn_prefix_ids(tokenizer, "instruct") == []
    # What the model continues from the prefix is judged as one response by the reward's format check.
    assert check_format(turn_prefix("few_shot") + " easy </think>\n<answer> Paris </answer>").valid


def test_unknown_prompt_styles_are_refused_by_name(tokenizer):
    for call in (lambda: prompt_messages("q", "chatty"), lambda: turn_prefix("chatty")):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown prompt style 'chatty'; choose one of instruct, few_shot"):
            call()


def test_few_shot_without_a_chat_template_is_plain_text(tokenizer):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    text = render_prompt(tokenizer, "q", "few_shot")
    assert text.startswith(RULES) and text.endswith("Question: q?\n")
    assert all(worked in text for _, worked in EXAMPLES)


def test_tiny_tokenizer_keeps_tags_whole_and_visible(tokenizer):
    codec = HFTextCodec(tokenizer)
    for tag in TAG_TOKENS:
        assert len(codec.encode(tag)) == 1
    text = "<search> capital of France </search>"
    assert codec.decode(codec.encode(text)) == text
    assert tokenizer.eos_token == "<|im_end|>"


@pytest.fixture
def hub() -> Iterator[str]:
    """A loopback stand-in for the Hugging Face hub's endpoint: it answers, which is all resolution asks of it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_registry_names_and_passthrough(tmp_path: Path, hub: str, monkeypatch: pytest.MonkeyPatch):
    assert {TINY_QWEN2, SMOLLM2} <= set(registry_names())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub)
    assert resolve_model("Qwen/Qwen2.5-3B") == "Qwen/Qwen2.5-3B", "a hub id passes through when the hub answers"
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())


def test_a_model_that_resolves_nowhere_says_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens: unreachable
    with pytest.raises(ModelNotFound) as typo:
        resolve_model("smollm2-135m-instruc")
    message = str(typo.value)
    assert "not an offline registry name (the closest is 'smollm2-135m-instruct'" in message
    assert f"no local folder {Path.cwd() / 'smollm2-135m-instruc'}" in message
    assert "hub (http://127.0.0.1:" in message and "unreachable from here" in message
    with pytest.raises(OSError, match="unreachable from here"):  # an OSError, as transformers' own
        resolve_model("Qwen/Qwen2.5-3B")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"):
        resolve_model("Qwen/Qwen2.5-3B")
    with pytest.raises(ModelNotFound, match="no local folder /nonexistent/model"):
        resolve_model("/nonexistent/model")


def test_what_a_model_name_can_be_checked_for_at_submission(tmp_path: Path) -> None:
    assert name_problem(TINY_QWEN2) is None and name_problem(str(tmp_path)) is None
    assert name_problem("Qwen/Qwen2.5-3B") is None, "only the learner can ask the hub"
    typo = name_problem("smollm2-135m-instruc")
    assert typo is not None and "the closest is 'smollm2-135m-instruct'" in typo and "owner/name" in typo
    assert name_problem(str(tmp_path / "missing")) == f"no local folder {tmp_path / 'missing'}"
    assert name_problem(str(tmp_path / "missing"), local_paths=False) is None, "the learner's volumes, not ours"
    assert "no local folder" not in (name_problem("smollm2-135m-instruc", local_paths=False) or "")


def test_one_shot_prompt_is_the_rules_one_worked_example_and_the_question(tokenizer):
    messages = prompt_messages("capital of france", "one_shot")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == prompt_messages("x", "few_shot")[2]["content"], "the first worked example"
    one, few = (len(build_prompt_ids(tokenizer, "q", style=style)) for style in ("one_shot", "few_shot"))
    assert one < few * 0.6, "the one-shot prompt costs the update far fewer tokens"
    assert turn_prefix("one_shot") == "<think>"
