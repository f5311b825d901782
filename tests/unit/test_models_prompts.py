"""The opening prompt and the tiny test tokenizer; the offline model registry's name resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.agent import HFTextCodec
from services.models import SMOLLM2, TAG_TOKENS, TINY_QWEN2, build_tiny_tokenizer, registry_names, resolve_model
from services.prompts import INSTRUCTION, build_prompt_ids, normalize_question, prompt_text, render_prompt


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


def test_tiny_tokenizer_keeps_tags_whole_and_visible(tokenizer):
    codec = HFTextCodec(tokenizer)
    for tag in TAG_TOKENS:
        assert len(codec.encode(tag)) == 1
    text = "<search> capital of France </search>"
    assert codec.decode(codec.encode(text)) == text
    assert tokenizer.eos_token == "<|im_end|>"


def test_registry_names_and_passthrough(tmp_path: Path):
    assert {TINY_QWEN2, SMOLLM2} <= set(registry_names())
    assert resolve_model("Qwen/Qwen2.5-3B") == "Qwen/Qwen2.5-3B"
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
