"""Unit tests of trainer.data: our JSONL, Search-R1 parquet, HF datasets, prompt ids, and the resumable sampler."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datakit import data_kit
from support import REFERENCE_INSTRUCTION

from services.contracts import DataConfig, DataSource
from trainer.data import (
    DataError,
    EpochSampler,
    Example,
    PromptStream,
    first_per_dataset,
    group_by_dataset,
    load_data,
    load_source,
    load_sources,
)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def our_row(i: int, source: str = "toy:train") -> dict[str, Any]:
    return {"id": f"q{i}", "question": f"What is {i} + {i}", "golden_answers": [str(2 * i)], "source": source}


def searchr1_row(index: int, source: str, question: str, answers: list[str], with_question: bool = False) -> dict:
    content = f"Answer the given question with the tags you know.\nQuestion: {question}\n"
    row = {
        "data_source": source,
        "prompt": [{"role": "user", "content": content}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
        "extra_info": {"split": "train", "index": index},
    }
    if with_question:
        row["question"] = question
    return row


# --------------------------------------------------------------------------------------------------------------
# Our JSONL


def test_load_the_data_kits_train_jsonl(tmp_path: Path) -> None:
    kit = data_kit(tmp_path)
    train = kit.path / "train" / "train.jsonl"
    examples = load_source(DataSource(path=str(train)))
    assert len(examples) == kit.train_count
    first, row = examples[0], kit.first_train
    assert (first.id, first.question, first.source) == (row["id"], row["question"], row["source"])
    assert first.golden_answers == tuple(row["golden_answers"])
    assert first.uid == f"{row['source']}:{row['id']}"
    assert first.dataset == kit.first_dataset
    assert len({e.uid for e in examples}) == kit.train_count
    assert set(group_by_dataset(examples)) == kit.train_datasets
    assert len(load_source(DataSource(path=str(train), format="jsonl", limit=10))) == 10


def test_first_per_dataset_keeps_the_first_examples_of_each_data_set() -> None:
    sources = ["nq:a", "hotpotqa:b", "nq:c", "nq:d", "hotpotqa:e", "nq:f"]
    examples = [Example(f"{s}:{i}", str(i), f"q{i}", ("x",), s) for i, s in enumerate(sources)]
    assert [e.id for e in first_per_dataset(examples, 2)] == ["0", "2", "1", "4"]
    assert [e.id for e in first_per_dataset(examples, 1)] == ["0", "1"]
    assert first_per_dataset(examples, None) == examples, "no limit: every example, in its order"


def test_load_our_jsonl_relative_to_base_dir(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "qs.jsonl", [our_row(1), "", our_row(2)])  # blank lines are skipped
    examples = load_source(DataSource(path="qs.jsonl"), base_dir=tmp_path)
    assert [e.uid for e in examples] == ["toy:train:q1", "toy:train:q2"]
    assert examples[1] == Example(
        uid="toy:train:q2", id="q2", question="What is 2 + 2", golden_answers=("4",), source="toy:train"
    )


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"id": "q9", "question": "x?"', "invalid JSON"),
        ('["not", "an", "object"]', "expected an object, got list"),
        ('{"id": "q9", "question": "x?", "source": "toy"}', "missing field(s) 'golden_answers'"),
        ('{"id": "q9", "question": "x?", "golden_answers": [], "source": "toy"}', "'golden_answers' is an empty list"),
        ('{"id": "q9", "question": "x?", "golden_answers": [3], "source": "toy"}', "'golden_answers[0]' must be a str"),
        ('{"id": "q9", "question": "  ", "golden_answers": ["a"], "source": "toy"}', "'question' is empty"),
        ('{"id": true, "question": "x?", "golden_answers": ["a"], "source": "toy"}', "'id' must be a string or an int"),
    ],
)
def test_malformed_jsonl_rows_name_file_and_line(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [our_row(1), "", bad_line, our_row(2)])
    with pytest.raises(DataError) as caught:
        load_source(DataSource(path=str(path)))
    message = str(caught.value)
    assert message.startswith(f"{path}:3: "), message  # line 3, counting the blank line
    assert reason in message


def test_duplicate_prompt_ids_are_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dup.jsonl", [our_row(1), our_row(2), our_row(1)])
    with pytest.raises(DataError, match=r"dup\.jsonl:3: duplicate prompt id 'toy:train:q1' \(first seen at .*:1\)"):
        load_source(DataSource(path=str(path)))
    other = write_jsonl(tmp_path / "other.jsonl", [our_row(2)])
    single = write_jsonl(tmp_path / "single.jsonl", [our_row(2)])
    with pytest.raises(DataError, match="also occurs in"):
        load_sources([DataSource(path=str(single)), DataSource(path=str(other))])


def test_same_id_in_two_sources_gives_two_prompt_ids(tmp_path: Path) -> None:
    nq = write_jsonl(tmp_path / "nq.jsonl", [our_row(0, source="nq")])
    hotpot = write_jsonl(tmp_path / "hotpot.jsonl", [our_row(0, source="hotpotqa")])
    examples = load_sources([DataSource(path=str(nq)), DataSource(path=str(hotpot))])
    assert [e.uid for e in examples] == ["nq:q0", "hotpotqa:q0"]


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_source(DataSource(path=str(tmp_path / "absent.jsonl")))
    (tmp_path / "data.csv").write_text("id,question\n")
    with pytest.raises(DataError, match=r"unknown file type \.csv"):
        load_source(DataSource(path=str(tmp_path / "data.csv")))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no examples"):
        load_source(DataSource(path=str(tmp_path / "empty.jsonl")))


# --------------------------------------------------------------------------------------------------------------
# Search-R1 parquet


def test_load_searchr1_parquet(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "train.parquet",
        [
            searchr1_row(0, "nq", "who wrote hamlet", ["William Shakespeare", "Shakespeare"]),
            searchr1_row(1, "nq", "capital of france", ["Paris"]),
            searchr1_row(0, "hotpotqa", "Which band was formed first?", ["Blur"]),  # same index, other source
        ],
    )
    for fmt in ("auto", "searchr1"):
        examples = load_source(DataSource(path=str(path), format=fmt))  # type: ignore[arg-type]
        assert [e.uid for e in examples] == ["nq:0", "nq:1", "hotpotqa:0"]
        first = examples[0]
        assert first.question == "who wrote hamlet"  # taken from the prompt's "Question:" line
        assert first.golden_answers == ("William Shakespeare", "Shakespeare")
        assert first.source == "nq"
        assert first.prompt_messages[0]["role"] == "user"
        assert "Question: who wrote hamlet" in first.prompt_messages[0]["content"]


def test_searchr1_question_column_wins_and_target_may_be_a_string(tmp_path: Path) -> None:
    row = searchr1_row(7, "popqa", "ignored in favour of the column", ["x"], with_question=True)
    row["question"] = "What is the capital of Peru?"
    row["reward_model"]["ground_truth"]["target"] = "Lima"
    path = write_jsonl(tmp_path / "searchr1.jsonl", [row])  # Search-R1 rows in a JSONL file
    (example,) = load_source(DataSource(path=str(path), format="searchr1"))
    assert (example.uid, example.question, example.golden_answers) == (
        "popqa:7",
        "What is the capital of Peru?",
        ("Lima",),
    )


def test_malformed_searchr1_rows_name_file_and_row(tmp_path: Path) -> None:
    good = searchr1_row(0, "nq", "q one", ["a"])
    no_target = searchr1_row(1, "nq", "q two", ["b"])
    no_target["reward_model"] = {"style": "rule"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, no_target])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'reward_model.ground_truth.target'"):
        load_source(DataSource(path=str(path)))

    rows = [searchr1_row(0, "nq", "q one", ["a"]), searchr1_row(1, "nq", "q two", ["b"])]
    rows[1]["prompt"] = [{"role": "user", "content": "no marker here"}]
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError, match=r"bad\.parquet row 1: no 'question' field.*'Question:'"):
        load_source(DataSource(path=str(path)))

    rows = [searchr1_row(0, "nq", "q one", ["a"])]
    rows[0]["data_source"] = None
    path = write_parquet(tmp_path / "nosource.parquet", rows)
    with pytest.raises(DataError, match=r"nosource\.parquet row 0: 'data_source' must be a string"):
        load_source(DataSource(path=str(path)))


def test_format_mismatch_is_reported(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "r1.parquet", [searchr1_row(0, "nq", "q", ["a"])])
    with pytest.raises(DataError, match=r"row 0: missing field\(s\) 'id', 'question', 'golden_answers', 'source'"):
        load_source(DataSource(path=str(path), format="jsonl"))
    write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match="fits neither our format"):
        load_source(DataSource(path=str(tmp_path / "odd.jsonl")))


def test_our_format_in_parquet_with_limit(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "ours.parquet", [our_row(i) for i in range(5)])
    examples = load_source(DataSource(path=str(path), limit=3))
    assert [e.id for e in examples] == ["q0", "q1", "q2"]


# --------------------------------------------------------------------------------------------------------------
# Hugging Face datasets (no internet: local folders, and the hub-id code path with load_dataset stubbed)


def test_hf_saved_to_disk(tmp_path: Path) -> None:
    import datasets

    train = datasets.Dataset.from_list([searchr1_row(i, "nq", f"question {i}", [f"a{i}"]) for i in range(3)])
    test = datasets.Dataset.from_list([our_row(i, source="bamboogle") for i in range(2)])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "saved"))
    folder = str(tmp_path / "saved")
    assert [e.uid for e in load_source(DataSource(path=folder, format="hf"))] == ["nq:0", "nq:1", "nq:2"]
    assert [e.uid for e in load_source(DataSource(path=folder, split="test"))] == ["bamboogle:q0", "bamboogle:q1"]
    with pytest.raises(DataError, match="no split 'dev'; it has test, train"):
        load_source(DataSource(path=folder, format="hf", split="dev"))


def test_hf_local_folder_of_parquet_files(tmp_path: Path) -> None:
    folder = tmp_path / "repo"
    folder.mkdir()
    write_parquet(folder / "train.parquet", [searchr1_row(i, "hotpotqa", f"q{i}", ["yes"]) for i in range(4)])
    source = DataSource(path=str(folder), format="hf", split="train")
    examples = load_source(source, cache_dir=str(tmp_path / "cache"))
    assert [e.uid for e in examples] == [f"hotpotqa:{i}" for i in range(4)]


def test_hf_hub_id_goes_to_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(path: str, name: str | None = None, *, split: str, cache_dir: str | None = None) -> Any:
        calls.append((path, name, split, cache_dir))
        return datasets.Dataset.from_list([searchr1_row(5, "nq", "q", ["a"]), searchr1_row(5, "hotpotqa", "q", ["b"])])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = DataSource(path="PeterJinGo/nq_hotpotqa_train", split="test")  # format auto: not a local path
    assert [e.uid for e in load_source(source)] == ["nq:5", "hotpotqa:5"]
    assert calls == [("PeterJinGo/nq_hotpotqa_train", None, "test", None)]


def test_hf_load_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"someone/qa \[train\]: cannot load .*ConnectionError: no internet"):
        load_source(DataSource(path="someone/qa", format="hf"))


def test_load_data_from_config(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [our_row(i) for i in range(4)])
    write_jsonl(tmp_path / "eval.jsonl", [our_row(i) for i in range(2)])  # may repeat train ids
    config = DataConfig(train=[DataSource(path="train.jsonl")], eval=[DataSource(path="eval.jsonl")])
    data = load_data(config, base_dir=tmp_path)
    assert (len(data.train), len(data.eval)) == (4, 2)


# --------------------------------------------------------------------------------------------------------------
# Sampling


def test_sampler_is_deterministic_and_drops_the_epoch_tail() -> None:
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    batches = [a.next_batch(4) for _ in range(4)]
    assert batches == [b.next_batch(4) for _ in range(4)]
    epoch0 = batches[0] + batches[1]
    assert len(set(epoch0)) == 8  # two disjoint batches; the last 2 items of the epoch are skipped
    assert (a.epoch, a.position) == (1, 8)
    assert batches[2] + batches[3] != epoch0  # epoch 1 has its own order
    assert EpochSampler(10, seed=4).next_batch(10) != EpochSampler(10, seed=3).next_batch(10)
    assert EpochSampler(5, shuffle=False).next_batch(5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="batch_size"):
        a.next_batch(11)


def test_sampler_resumes_exactly_across_epochs() -> None:
    reference = EpochSampler(7, seed=11)
    expected = [reference.next_batch(3) for _ in range(9)]
    for stop in range(9):
        sampler = EpochSampler(7, seed=11)
        for _ in range(stop):
            sampler.next_batch(3)
        state = json.loads(json.dumps(sampler.state_dict()))  # checkpoints store it as JSON-like data
        resumed = EpochSampler(7, seed=11)
        resumed.load_state_dict(state)
        assert [resumed.next_batch(3) for _ in range(9 - stop)] == expected[stop:]


def test_sampler_refuses_foreign_state() -> None:
    state = EpochSampler(7, seed=11).state_dict()
    with pytest.raises(ValueError, match="seed=11"):
        EpochSampler(7, seed=12).load_state_dict(state)
    with pytest.raises(ValueError, match="size=7"):
        EpochSampler(8, seed=11).load_state_dict(state)


def test_prompt_stream_resumes_and_checks_the_data() -> None:
    examples = [
        Example(uid=f"toy:{i}", id=str(i), question=f"q{i}", golden_answers=("a",), source="toy") for i in range(6)
    ]
    stream = PromptStream(examples, seed=5)
    stream.next_batch(4)
    state = stream.state_dict()
    following = [e.uid for e in stream.next_batch(4)]
    resumed = PromptStream(examples, seed=5)
    resumed.load_state_dict(state)
    assert [e.uid for e in resumed.next_batch(4)] == following
    assert resumed.epoch == 1
    with pytest.raises(ValueError, match="different training data"):
        PromptStream(examples[::-1], seed=5).load_state_dict(state)


# --------------------------------------------------------------------------------------------------------------
# The prompt a Search-R1 row trains on


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from services.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("tiny-random-qwen2"))


def reference_parquet(path: Path) -> Path:
    """Two rows in the reference's column layout (data_source, prompt, ability, reward_model, extra_info)."""
    rows = [searchr1_row(i, "nq", question, answers) for i, (question, answers) in
            enumerate([("who wrote hamlet?", ["Shakespeare"]), ("capital of france?", ["Paris"])])]  # fmt: skip
    for row, question in zip(rows, ("who wrote hamlet?", "capital of france?"), strict=True):
        row["prompt"] = [{"role": "user", "content": f"{REFERENCE_INSTRUCTION}{question}\n"}]
    return write_parquet(path, rows)


def test_a_searchr1_row_trains_on_its_own_prompt_by_default(tmp_path: Path, tokenizer: Any) -> None:
    from services.contracts import RolloutConfig
    from trainer.data import prompt_ids_for

    path = reference_parquet(tmp_path / "train.parquet")
    [example, _] = load_source(DataSource(path=str(path)))
    assert example.prompt_messages == ({"role": "user", "content": f"{REFERENCE_INSTRUCTION}who wrote hamlet?\n"},)
    rollout = RolloutConfig()
    ids = prompt_ids_for(example, tokenizer, rollout)
    # As the reference's RLHFDataset: the chat template with a generation prompt, tokenised without special
    # tokens added.
    rendered = tokenizer.apply_chat_template(list(example.prompt_messages), add_generation_prompt=True, tokenize=False)
    assert ids == tokenizer.encode(rendered, add_special_tokens=False)
    text = tokenizer.decode(ids)
    assert f"<|im_start|>user\n{REFERENCE_INSTRUCTION}who wrote hamlet?\n<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    # The newest max_prompt_tokens tokens (the question sits at the end).
    assert prompt_ids_for(example, tokenizer, RolloutConfig(max_prompt_tokens=8)) == ids[-8:]


def test_render_re_renders_in_our_wording_and_our_rows_always_render(tmp_path: Path, tokenizer: Any) -> None:
    from services.contracts import RolloutConfig
    from services.prompts import build_prompt_ids
    from trainer.data import prompt_ids_for

    rollout = RolloutConfig(prompt_style="few_shot")
    path = reference_parquet(tmp_path / "train.parquet")
    [example, _] = load_source(DataSource(path=str(path), prompt="render"))
    assert example.prompt_messages == ()
    assert prompt_ids_for(example, tokenizer, rollout) == build_prompt_ids(
        tokenizer, "who wrote hamlet?", rollout.max_prompt_tokens, "few_shot"
    )
    ours = load_source(DataSource(path=str(write_jsonl(tmp_path / "ours.jsonl", [our_row(1)]))))[0]
    assert ours.prompt_messages == ()
    assert REFERENCE_INSTRUCTION not in tokenizer.decode(prompt_ids_for(ours, tokenizer, rollout))


def test_without_a_chat_template_the_first_message_is_the_prompt(tmp_path: Path, tokenizer: Any) -> None:
    from services.prompts import build_reference_prompt_ids

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    messages = [{"role": "user", "content": f"{REFERENCE_INSTRUCTION}who wrote hamlet?\n"}]
    assert plain.decode(build_reference_prompt_ids(plain, messages)) == messages[0]["content"]
