"""The generated task: deterministic per seed, answerable only from its corpus, held-out entities disjoint."""

from __future__ import annotations

import pytest

from reward.scoring import answer_in_text
from searchr1.fictional import generate


def entity_of(question: str, names: set[str]) -> str:
    """The entity a question is about: the longest known name it contains."""
    return max((n for n in names if n in question), key=len)


@pytest.mark.parametrize("seed", [0, 7, 12345])
def test_every_answer_is_in_a_passage_titled_by_its_entity(seed: int) -> None:
    task = generate(seed)
    by_title: dict[str, list[str]] = {}
    for passage in task.corpus:
        title, text = passage["contents"].split("\n", 1)
        by_title.setdefault(title.strip('"'), []).append(text)
    for q in task.train + task.eval_single_hop:
        entity = entity_of(q["question"], set(by_title))
        assert any(answer_in_text(text, q["golden_answers"]) for text in by_title[entity]), q


@pytest.mark.parametrize("seed", [0, 3])
def test_held_out_entities_are_never_asked_about_or_hopped_through_in_training(seed: int) -> None:
    task = generate(seed)
    titles = {p["contents"].split("\n", 1)[0].strip('"') for p in task.corpus}
    trained = {entity_of(q["question"], titles) for q in task.train}
    held_out = {entity_of(q["question"], titles) for q in task.eval_single_hop + task.eval_two_hop}
    assert not trained & held_out
    train_answers = {a for q in task.train for a in q["golden_answers"]}
    two_hop_answers = {a for q in task.eval_two_hop for a in q["golden_answers"]}
    # the second hop's town is held out too: its river or founding year was never a train answer about it
    eval_towns = {a for q in task.eval_single_hop if "born" in q["question"] or "birthplace" in q["question"]
                  for a in q["golden_answers"] if not a.isdigit()}  # fmt: skip
    assert eval_towns and not eval_towns & train_answers and not eval_towns & trained
    assert two_hop_answers and len(task.eval_two_hop) == len({entity_of(q["question"], titles)
                                                              for q in task.eval_two_hop})  # fmt: skip


def test_names_look_alike_so_the_query_must_name_the_entity_in_full() -> None:
    task = generate(0)
    people = {p["contents"].split("\n", 1)[0].strip('"') for p in task.corpus if p["id"].startswith("person-")}
    first_names = [name.split()[0] for name in people]
    assert len(set(first_names)) < len(people) / 3, "each first name is shared by several people"


def test_a_seed_gives_one_task_and_other_seeds_other_tasks() -> None:
    assert generate(5) == generate(5)
    assert generate(5).corpus != generate(6).corpus
    task = generate(5)
    assert len(task.train) > 500 and len(task.eval_single_hop) >= 150 and len(task.eval_two_hop) >= 50
    assert len({q["question"] for q in task.train}) == len(task.train)


def test_each_set_names_its_own_source_so_evals_report_per_set() -> None:
    task = generate(1)
    assert {q["source"] for q in task.train} == {"fictional_train"}
    assert {q["source"] for q in task.eval_single_hop} == {"fictional_single_hop"}
    assert {q["source"] for q in task.eval_two_hop} == {"fictional_two_hop"}
