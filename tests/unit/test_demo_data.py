"""The demo's data preparation: a slice of the shared kit whose corpus holds the answers, or generated facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reward.scoring import normalize_answer
from services.contracts import JobSpec
from services.demo import demo_job, from_shared_data, generated

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(not (SHARED / "corpus" / "corpus.jsonl").exists(), reason="../shared/data is not beside the repo")
def test_shared_slice_keeps_answer_passages_and_is_deterministic(tmp_path: Path) -> None:
    data = from_shared_data(SHARED, tmp_path / "a", 20, 5, 50, normalize_answer)
    again = from_shared_data(SHARED, tmp_path / "b", 20, 5, 50, normalize_answer)
    assert data.train.read_text() == again.train.read_text()
    assert len(rows(data.train)) == 20 and [len(rows(p)) for p in data.eval] == [5, 5]
    corpus_text = " ".join(f" {normalize_answer(p['contents'])} " for p in rows(data.corpus))
    answered = [
        q for q in rows(data.train) if any(f" {normalize_answer(a)} " in corpus_text for a in q["golden_answers"])
    ]
    assert len(answered) >= 15, "most train answers must be findable in the demo corpus"
    spec = JobSpec.parse(demo_job(data, steps=3))
    assert spec.algorithm.name == "grpo" and spec.schedule.total_steps == 3


def test_generated_facts_are_answerable_only_from_their_corpus(tmp_path: Path) -> None:
    data = generated(tmp_path)
    corpus = " ".join(p["contents"] for p in rows(data.corpus))
    questions = rows(data.train) + rows(data.eval[0])
    assert len(questions) == 24
    assert all(q["golden_answers"][0] in corpus for q in questions)
    assert "generated" in data.origin
