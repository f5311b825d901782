"""The data the tests read: the shared data kit (../shared/data) where it is, else data generated from
`searchr1.fictional`, so no test skips in a bare clone.

`SEARCHR1_SHARED_DATA_DIR` (the API's name for the same folder) points the tests at another kit; a folder without
the kit's files (e.g. `SEARCHR1_SHARED_DATA_DIR=/nonexistent`) makes every test use the generated data. Each kind
of data comes as one object that holds what the tests must find in it, right for whichever data is in use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from searchr1.fictional import SOURCES, FictionalTask, generate
from services.api.evaluations import EVAL_SETS
from services.config import SHARED_DATA_DIR

SHARED_DATA = Path(os.environ.get("SEARCHR1_SHARED_DATA_DIR") or SHARED_DATA_DIR)
SHARED_CORPUS = SHARED_DATA / "corpus" / "corpus.jsonl"
N_PASSAGES = 200
GENERATED_SEED = 0
SINGLE_HOP_SETS = ("nq", "triviaqa", "popqa")


@lru_cache(maxsize=1)
def _task() -> FictionalTask:
    return generate(GENERATED_SEED)


def _read_lines(path: Path, n: int) -> list[str]:
    lines = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            lines.append(line if line.endswith("\n") else line + "\n")
            if len(lines) == n:
                break
    return lines


def _title(passage: dict[str, Any]) -> str:
    return passage["contents"].split("\n", 1)[0].strip('"')


def _jsonl(rows: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(row) + "\n" for row in rows]


@dataclass(frozen=True)
class TestCorpus:
    """The first passages of a corpus (JSONL lines, `{"id", "contents"}` with a quoted title line, ids "0", "1",
    ... as in the shared corpus), a few questions in our JSONL format, and what searching the passages finds."""

    __test__ = False  # not a test class, whatever its name

    lines: tuple[str, ...]
    question: str  # a question whose best passage (dense and hybrid) is passage `top_id`
    query: str  # keywords whose best passage in every mode is passage `top_id`
    top_id: str
    top_title: str
    top_text_start: str
    queries: tuple[str, str]  # two more questions, each sharing words with 4 passages or more
    eval_questions: tuple[dict[str, Any], ...]


@lru_cache(maxsize=1)
def corpus_in_use() -> TestCorpus:
    """The shared corpus's first N_PASSAGES passages where the kit is, else as many generated ones."""
    if SHARED_CORPUS.is_file():
        with (SHARED_DATA / "eval" / "nq_test.jsonl").open(encoding="utf-8") as handle:
            nq = tuple(json.loads(next(handle)) for _ in range(4))
        return TestCorpus(
            lines=tuple(_read_lines(SHARED_CORPUS, N_PASSAGES)),
            question="who won the nobel prize in physics twice",
            query="nobel prize physics",
            top_id="0",
            top_title="List of Nobel laureates in Physics",
            top_text_start="The first Nobel Prize in Physics",
            queries=("when did the cold war end", "united states film"),
            eval_questions=nq,
        )
    task = _task()
    passages = [{"id": str(i), "contents": row["contents"]} for i, row in enumerate(task.corpus[:N_PASSAGES])]
    # The first passage that a question asks about: it names the passage's entity, and its answer is in the text.
    top, asked = next(
        (passage, question)
        for passage in passages
        for question in task.train + task.eval_single_hop
        if _title(passage) in question["question"] and question["golden_answers"][0] in passage["contents"]
    )
    return TestCorpus(
        lines=tuple(_jsonl(passages)),
        question=asked["question"],
        query=f"{_title(top)} {asked['golden_answers'][0]}",
        top_id=top["id"],
        top_title=_title(top),
        top_text_start=top["contents"].split("\n", 1)[1],
        queries=("Which river flows through the town?", "In what year was this person born?"),
        eval_questions=tuple(task.eval_single_hop[:4]),
    )


@dataclass(frozen=True)
class DataKit:
    """A data kit folder in the shared kit's layout (train/train.jsonl, eval/<set>.jsonl for every set the API
    names, corpus/corpus.jsonl) and what its train set holds."""

    path: Path
    train_count: int
    first_train: dict[str, Any]  # the train set's first row
    first_dataset: str  # the data set that row is counted under
    train_datasets: frozenset[str]


def data_kit(folder: Path) -> DataKit:
    """The shared data kit where it is, else the generated task written into `folder`: its train questions, its
    single-hop questions as each single-hop eval set (NQ, TriviaQA, PopQA), its two-hop ones as each other set,
    and its corpus."""
    if SHARED_CORPUS.is_file():
        first = {"id": "5a77ec115542992a6e59dff7", "question": "If Gallu is a demon Lilu is what?",
                 "golden_answers": ["a spirit"], "source": "hotpotqa:train:OSU-NLP-Group/HippoRAG(legacy)"}  # fmt: skip
        return DataKit(SHARED_DATA, 800, first, "hotpotqa",
                       frozenset({"hotpotqa", "2wikimultihopqa", "musique"}))  # fmt: skip
    task = _task()
    files = {"train/train.jsonl": task.train, "corpus/corpus.jsonl": task.corpus}
    files |= {f"eval/{file}": task.eval_single_hop if name in SINGLE_HOP_SETS else task.eval_two_hop
              for name, file in EVAL_SETS.items()}  # fmt: skip
    for name, rows in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("".join(_jsonl(rows)), encoding="utf-8")
    source = SOURCES["train"]
    return DataKit(folder, len(task.train), task.train[0], source, frozenset({source}))
