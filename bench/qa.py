"""The shared QA data the benchmarks read (../shared/data, never copied into the project) and answer recall."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reward.scoring import answer_in_text

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CORPUS = SHARED_DATA / "corpus" / "corpus.jsonl"
EVAL_FILES = {
    "nq": "nq_test.jsonl",
    "hotpotqa": "hotpotqa_dev.jsonl",
    "2wiki": "2wikimultihopqa_dev.jsonl",
    "musique": "musique_dev.jsonl",
    "triviaqa": "triviaqa_test.jsonl",
    "popqa": "popqa_test.jsonl",
    "bamboogle": "bamboogle_test.jsonl",
}


def require_shared_data() -> None:
    """Stop with a clear message when ../shared/data is not beside the project."""
    if not CORPUS.is_file():
        raise SystemExit(f"the shared data kit is missing: expected {CORPUS}")


def corpus_subset(passages: int, folder: Path) -> Path:
    """The first `passages` lines of the shared corpus, written once into `folder` (benchmarks index a subset)."""
    folder.mkdir(parents=True, exist_ok=True)
    subset = folder / f"corpus-{passages}.jsonl"
    with CORPUS.open() as src, subset.open("w") as dst:
        for i, line in enumerate(src):
            if i == passages:
                break
            dst.write(line)
    return subset


def load_questions(name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` questions (all when None) of an eval set, by its short name (see EVAL_FILES)."""
    if name not in EVAL_FILES:
        raise SystemExit(f"unknown eval set {name!r}; choose from {', '.join(EVAL_FILES)}")
    with (SHARED_DATA / "eval" / EVAL_FILES[name]).open() as lines:
        questions = [json.loads(line) for line in lines if line.strip()]
    return questions[:limit]


def answer_recall(
    found: Sequence[Sequence[str]], questions: Sequence[dict[str, Any]], texts: dict[str, str], k: int
) -> float:
    """Share of questions whose top-k passages (ids, best first) include one containing a gold answer."""
    hits = sum(
        any(answer_in_text(texts[i], q["golden_answers"]) for i in ids[:k])
        for ids, q in zip(found, questions, strict=True)
    )
    return hits / len(questions)
