"""A generated question-answering task that only search can solve: fictional people and towns.

Every name is made up from syllables, so no model has seen a fact about them: an answer can only come from the
corpus. People have a birthplace, an occupation and a birth year; towns have a river, a founder and a founding
year. Each fact is stated by its own short passage, in one of several wordings, titled with its entity's name.
Names share first names, surnames and syllables with other entities, so the passages of look-alike entities are
the distractors, and a query must name the entity in full to find the right one.

Questions are paraphrased (several templates per relation). Train and held-out entities are disjoint: what a
model can learn is to search for the entity and copy the answer from the passage, not the facts themselves.
Two held-out sets: single-hop (one search) and two-hop (the birthplace, then a fact of that town).
Everything follows from the seed; nothing is downloaded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

SOURCES = {"train": "fictional_train", "single": "fictional_single_hop", "two_hop": "fictional_two_hop"}

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "t", "th", "v", "w"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou"]
_CODAS = ["", "", "l", "n", "r", "s", "th", "m", "x", "nd"]
_TOWN_SUFFIXES = ["ford", "mere", "holt", "wick", "dale", "stead", "brook", "haven", "moor", "gate"]
OCCUPATIONS = [
    "glassblower", "cartographer", "clockmaker", "beekeeper", "shipwright", "astronomer", "potter", "weaver",
    "blacksmith", "herbalist", "bookbinder", "stonemason", "falconer", "luthier", "tanner", "cooper", "miller",
    "engraver", "surveyor", "apothecary", "saddler", "chandler", "vintner", "thatcher",
]  # fmt: skip

# One wording of each fact is chosen per passage; {name} is the entity, {value} the fact.
_PASSAGES: dict[str, list[str]] = {
    "birthplace": ["{name} was born in {value}.", "{name} grew up in {value}, the town of their birth.",
                   "Records list {value} as the birthplace of {name}."],
    "occupation": ["{name} worked as {article} {value}.", "By trade, {name} was {article} {value}.",
                   "{name} earned a living as {article} {value}."],
    "birth_year": ["{name} was born in the year {value}.", "{name}'s birth is recorded in {value}.",
                   "In {value}, {name} was born."],
    "river": ["{name} lies on the river {value}.", "The river {value} flows through {name}.",
              "{name} was built on the banks of the {value}."],
    "founder": ["{name} was founded by {value}.", "{value} founded the town of {name}.",
                "The founder of {name} was {value}."],
    "founding_year": ["{name} was founded in {value}.", "The town of {name} dates from {value}.",
                      "{name} received its charter in {value}."],
}  # fmt: skip

_QUESTIONS: dict[str, list[str]] = {
    "birthplace": ["In which town was {name} born?", "Where was {name} born?", "What is the birthplace of {name}?"],
    "occupation": ["What did {name} do for a living?", "What was the occupation of {name}?",
                   "What was {name}'s trade?"],
    "birth_year": ["In what year was {name} born?", "When was {name} born?", "What is the birth year of {name}?"],
    "river": ["Which river flows through {name}?", "On which river does {name} lie?",
              "What river runs through {name}?"],
    "founder": ["Who founded {name}?", "Who was the founder of {name}?", "By whom was {name} founded?"],
    "founding_year": ["In what year was {name} founded?", "When was {name} founded?",
                      "What is the founding year of {name}?"],
}  # fmt: skip

_TWO_HOP: dict[str, list[str]] = {
    "river": ["Which river flows through the town where {name} was born?",
              "On which river lies the birthplace of {name}?"],
    "founding_year": ["In what year was the birthplace of {name} founded?",
                      "When was the town where {name} was born founded?"],
}  # fmt: skip

PERSON_RELATIONS = ("birthplace", "occupation", "birth_year")
TOWN_RELATIONS = ("river", "founder", "founding_year")


@dataclass
class Entity:
    name: str
    kind: str  # "person" or "town"
    facts: dict[str, str] = field(default_factory=dict)


@dataclass
class FictionalTask:
    """The corpus (`{"id", "contents"}` rows) and the questions (`{"id", "question", "golden_answers", "source"}`)."""

    corpus: list[dict[str, Any]]
    train: list[dict[str, Any]]
    eval_single_hop: list[dict[str, Any]]
    eval_two_hop: list[dict[str, Any]]


def _state(rng: random.Random, relation: str, name: str, value: str) -> str:
    article = "an" if value[0] in "aeiou" else "a"
    return rng.choice(_PASSAGES[relation]).format(name=name, value=value, article=article)


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(_syllable(rng) for _ in range(syllables)).capitalize()


def _unique_words(rng: random.Random, count: int, make: Any, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = make()
        if word not in taken and len(word) >= 4:
            taken.add(word)
            words.append(word)
    return words


def generate(seed: int = 0, people: int = 240, towns: int = 60, held_out: float = 0.25) -> FictionalTask:
    """The task for `seed`: `people` people and `towns` towns. A `held_out` share of the people, born in a
    `held_out` share of the towns, are asked about only in the eval sets: no eval question names, or hops through,
    an entity that a train question is about."""
    rng = random.Random(seed)
    taken: set[str] = set()
    first_names = _unique_words(rng, max(8, people // 6), lambda: _word(rng, rng.choice((1, 2))), taken)
    surnames = _unique_words(rng, max(8, people // 4), lambda: _word(rng, 2), taken)
    town_names = _unique_words(rng, towns, lambda: _word(rng, rng.choice((1, 2))) + rng.choice(_TOWN_SUFFIXES),
                               taken)  # fmt: skip
    rivers = _unique_words(rng, max(4, towns // 2), lambda: _word(rng, 2), taken)
    n_eval_towns = max(1, round(towns * held_out))
    eval_towns, train_towns = town_names[:n_eval_towns], town_names[n_eval_towns:]
    n_eval = max(1, round(people * held_out))
    full_names: set[str] = set()
    persons: list[Entity] = []
    while len(persons) < people:  # look-alike names: first names and surnames are shared by several people
        name = f"{rng.choice(first_names)} {rng.choice(surnames)}"
        if name in full_names:
            continue
        full_names.add(name)
        home = rng.choice(eval_towns if len(persons) < n_eval else train_towns)
        persons.append(Entity(name, "person", {
            "birthplace": home, "occupation": rng.choice(OCCUPATIONS), "birth_year": str(rng.randint(1620, 1890)),
        }))  # fmt: skip
    places = [
        Entity(town, "town", {"river": rng.choice(rivers), "founder": f"{rng.choice(first_names)} "
               f"{rng.choice(surnames)}", "founding_year": str(rng.randint(900, 1600))})
        for town in town_names
    ]  # fmt: skip
    corpus = [
        {"id": f"{entity.kind}-{i}-{relation}",
         "contents": f'"{entity.name}"\n' + _state(rng, relation, entity.name, value)}
        for i, entity in enumerate(persons + places) for relation, value in entity.facts.items()
    ]  # fmt: skip
    rng.shuffle(corpus)
    eval_people, train_people = persons[:n_eval], persons[n_eval:]
    town_by_name = {t.name: t for t in places}

    def question(qid: str, template: str, name: str, answer: str) -> dict[str, Any]:
        source = SOURCES["two_hop" if qid.startswith("eval2-") else "single" if qid.startswith("eval-") else "train"]
        return {"id": qid, "question": template.format(name=name), "golden_answers": [answer], "source": source}

    train: list[dict[str, Any]] = []
    for i, person in enumerate(train_people):
        for relation in PERSON_RELATIONS:
            train.append(question(f"train-p{i}-{relation}", rng.choice(_QUESTIONS[relation]), person.name,
                                  person.facts[relation]))  # fmt: skip
    for i, town in enumerate(town_by_name[name] for name in train_towns):
        for relation in TOWN_RELATIONS:
            train.append(question(f"train-t{i}-{relation}", rng.choice(_QUESTIONS[relation]), town.name,
                                  town.facts[relation]))  # fmt: skip
    rng.shuffle(train)
    single = [
        question(f"eval-p{i}-{relation}", rng.choice(_QUESTIONS[relation]), person.name, person.facts[relation])
        for i, person in enumerate(eval_people) for relation in PERSON_RELATIONS
    ]  # fmt: skip
    rng.shuffle(single)
    two_hop = []
    for i, person in enumerate(eval_people):
        relation = rng.choice(tuple(_TWO_HOP))
        town = town_by_name[person.facts["birthplace"]]
        two_hop.append(question(f"eval2-p{i}-{relation}", rng.choice(_TWO_HOP[relation]), person.name,
                                town.facts[relation]))  # fmt: skip
    return FictionalTask(corpus, train, single, two_hop)
