"""Training and evaluation questions: loading, globally unique prompt ids, and a resumable shuffled sampler.

Three inputs, each named by a `services.contracts.DataSource`:
- our JSONL (`{"id", "question", "golden_answers", "source"}` per line, as in shared/data);
- Search-R1's rows (parquet or JSONL): `prompt` (a chat list whose user message ends with `Question: ...`),
  `reward_model.ground_truth.target` (the gold answers), `data_source`, `extra_info.index`, and often `question`;
  the learner prompts with the row's `prompt` verbatim unless the source asks to re-render it;
- a Hugging Face dataset: a hub id (`datasets.load_dataset(path, name, split=split)`), a local folder of data
  files, or a folder written by `save_to_disk`. The row schema (ours or Search-R1's) is detected from the columns.

Every example gets `uid = "<source>:<id>"`, unique across all sources of a job: GRPO groups samples by it, so
item k of two data sets never share a group (the reference's bug). A malformed row raises `DataError` naming
the file and line (JSONL, 1-based) or row (parquet / datasets, 0-based) and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from services.contracts import DataConfig, DataSource, RolloutConfig, dataset_label
from services.prompts import build_prompt_ids, build_reference_prompt_ids

Schema = Literal["ours", "searchr1"]

OUR_FIELDS = ("id", "question", "golden_answers", "source")
SEARCHR1_FIELDS = ("prompt", "reward_model.ground_truth.target", "data_source", "extra_info.index")
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_QUESTION_MARKER = "Question:"


class DataError(ValueError):
    """A data source that cannot be read, or a row that does not fit its schema (the message says where)."""


@dataclass(frozen=True)
class Example:
    """One question: what the learner turns into a prompt and the reward tier scores against."""

    uid: str  # "<source>:<id>", unique across every source of a job
    id: str
    question: str
    golden_answers: tuple[str, ...]
    source: str
    # Search-R1's own chat prompt when the row carried one and its source keeps it (`DataSource.prompt`
    # "verbatim"): the learner prompts with it as the reference does; empty: our wording (`prompt_ids_for`).
    prompt_messages: tuple[dict[str, str], ...] = field(default=(), compare=False)
    label: str | None = None  # its DataSource's label, when it has one

    @property
    def dataset(self) -> str:
        """The data set name, for metrics: the source's label, else the row's source up to its first `:`
        (`hotpotqa:train:...` -> `hotpotqa`)."""
        return self.label or dataset_label(self.source)


def prompt_uid(source: str, example_id: str) -> str:
    """The globally unique prompt id of an example."""
    return f"{source}:{example_id}"


# --------------------------------------------------------------------------------------------------------------
# Row parsing


def _field(row: dict[str, Any], dotted: str) -> Any:
    """`row["a"]["b"]` for "a.b"; raises KeyError naming the first missing part."""
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _as_list(value: Any) -> Any:
    """numpy arrays (pandas reads parquet lists as arrays) become lists; everything else is returned as is."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"'{name}' is empty")
    return value


def _identifier(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | np.integer):
        raise ValueError(f"'{name}' must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise ValueError(f"'{name}' is empty")
    return text


def _answers(value: Any, name: str) -> tuple[str, ...]:
    value = _as_list(value)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"'{name}' must be a list of strings, got {type(value).__name__}")
    if not value:
        raise ValueError(f"'{name}' is an empty list")
    for i, answer in enumerate(value):
        if not isinstance(answer, str):
            raise ValueError(f"'{name}[{i}]' must be a string, got {type(answer).__name__}")
        if not answer.strip():
            raise ValueError(f"'{name}[{i}]' is empty")
    return tuple(value)


def _messages(value: Any) -> tuple[dict[str, str], ...]:
    value = _as_list(value)
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("'prompt' must be a non-empty list of chat messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"'prompt[{i}]' must be a message with a string 'content'")
        messages.append({"role": str(message.get("role", "user")), "content": message["content"]})
    return tuple(messages)


def _question_from_messages(messages: Sequence[dict[str, str]]) -> str:
    """The question of a Search-R1 prompt: the text after the last `Question:` of the last user message."""
    users = [m["content"] for m in messages if m["role"] == "user"] or [messages[-1]["content"]]
    content = users[-1]
    if _QUESTION_MARKER not in content:
        raise ValueError(f"no 'question' field, and the prompt has no '{_QUESTION_MARKER}' line to take it from")
    question = content.rsplit(_QUESTION_MARKER, 1)[1].strip()
    if not question:
        raise ValueError(f"the prompt's '{_QUESTION_MARKER}' line is empty")
    return question


def parse_our_row(row: dict[str, Any]) -> Example:
    """An example from a row in our format; raises ValueError with the reason."""
    missing = [name for name in OUR_FIELDS if name not in row]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(repr(m) for m in missing)}")
    example_id = _identifier(row["id"], "id")
    source = _text(row["source"], "source")
    return Example(
        uid=prompt_uid(source, example_id),
        id=example_id,
        question=_text(row["question"], "question").strip(),
        golden_answers=_answers(row["golden_answers"], "golden_answers"),
        source=source,
    )


def parse_searchr1_row(row: dict[str, Any]) -> Example:
    """An example from a row in Search-R1's format; raises ValueError with the reason."""
    try:
        target = _field(row, "reward_model.ground_truth.target")
    except KeyError:
        raise ValueError("missing field 'reward_model.ground_truth.target' (the gold answers)") from None
    if "data_source" not in row:
        raise ValueError("missing field 'data_source'")
    source = _text(row["data_source"], "data_source")
    try:
        raw_id = _field(row, "extra_info.index")
        id_name = "extra_info.index"
    except KeyError:
        if "id" not in row:
            raise ValueError("missing field 'extra_info.index' (and no 'id' to use instead)") from None
        raw_id, id_name = row["id"], "id"
    example_id = _identifier(raw_id, id_name)
    messages = _messages(row["prompt"]) if row.get("prompt") is not None else ()
    if isinstance(row.get("question"), str) and row["question"].strip():
        question = row["question"].strip()
    elif messages:
        question = _question_from_messages(messages)
    else:
        raise ValueError("missing field 'prompt' (and no 'question' to use instead)")
    return Example(
        uid=prompt_uid(source, example_id),
        id=example_id,
        question=question,
        golden_answers=_answers(target, "reward_model.ground_truth.target"),
        source=source,
        prompt_messages=messages,
    )


def detect_schema(row: dict[str, Any]) -> Schema:
    """Search-R1's rows carry `reward_model`/`prompt`; ours carry `golden_answers`/`question`."""
    if "reward_model" in row or "prompt" in row:
        return "searchr1"
    if "golden_answers" in row or "question" in row:
        return "ours"
    raise ValueError(
        f"row fits neither our format (fields {', '.join(OUR_FIELDS)}) nor Search-R1's "
        f"(fields {', '.join(SEARCHR1_FIELDS)}); it has {', '.join(sorted(map(str, row))) or 'no fields'}"
    )


_PARSERS = {"ours": parse_our_row, "searchr1": parse_searchr1_row}


# --------------------------------------------------------------------------------------------------------------
# Row readers: (where, row) pairs


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            yield where, row


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{path} row {index}", row
            index += 1


def _file_rows(path: Path) -> Iterator[tuple[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_rows(path)
    if suffix in PARQUET_SUFFIXES:
        return _parquet_rows(path)
    raise DataError(f"{path}: unknown file type {suffix or '(none)'}; use .jsonl, .json or .parquet")


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _hf_rows(source: DataSource, path: Path | None, cache_dir: str | None) -> Iterator[tuple[str, Any]]:
    import datasets

    label = f"{source.path} [{source.split}]"
    try:
        if path is not None and path.is_dir() and _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    raise DataError(f"{label}: no split {source.split!r}; it has {', '.join(sorted(loaded))}")
                loaded = loaded[source.split]
        else:
            target = str(path) if path is not None else source.path
            loaded = datasets.load_dataset(target, source.name, split=source.split, cache_dir=cache_dir)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types (hub, network, builder); all mean "cannot load"
        raise DataError(
            f"{label}: cannot load the Hugging Face dataset ({type(exc).__name__}: {exc}). Without internet access "
            "use a local copy: a folder written by save_to_disk, or parquet/JSONL files"
        ) from exc
    for index, row in enumerate(loaded):
        yield f"{label} row {index}", row


def _resolve(path_text: str, base_dir: Path | None) -> Path:
    path = Path(path_text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _rows_of(
    source: DataSource, base_dir: Path | None, cache_dir: str | None
) -> tuple[Iterator[tuple[str, Any]], Schema | None]:
    """The rows of a source and the schema its format forces (None: detect from the first row)."""
    path = _resolve(source.path, base_dir)
    exists = path.exists()
    forced: Schema | None = {"jsonl": "ours", "searchr1": "searchr1"}.get(source.format)
    if exists and path.is_file():
        return _file_rows(path), forced  # a local file reads the same whatever the format says
    if source.format == "hf":
        return _hf_rows(source, path if exists else None, cache_dir), None
    if exists:
        if source.format != "auto":
            raise DataError(f"{path}: is a folder; format {source.format!r} needs a .jsonl or .parquet file")
        return _hf_rows(source, path, cache_dir), None
    looks_like_file = path.suffix.lower() in JSONL_SUFFIXES + PARQUET_SUFFIXES
    if source.format == "auto" and _HF_ID.match(source.path) and not looks_like_file:
        return _hf_rows(source, None, cache_dir), None
    raise DataError(f"{path}: no such file or folder")


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_source(source: DataSource, base_dir: Path | None = None, cache_dir: str | None = None) -> list[Example]:
    """The examples of one source, in file order, at most `source.limit` of them.

    Relative paths are taken from `base_dir` (default: the working directory). `source.name` is the Hugging
    Face config name and `source.split` the split (both unused for a single local file); `cache_dir` goes to
    `datasets.load_dataset`. Every row must parse, and prompt ids must be unique within the source.
    """
    rows, schema = _rows_of(source, base_dir, cache_dir)
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        if source.limit is not None and len(examples) >= source.limit:
            break
        try:
            if not isinstance(row, dict):
                raise ValueError(f"expected an object, got {type(row).__name__}")
            if schema is None:
                schema = detect_schema(row)
            example = _PARSERS[schema](row)
            if source.label:
                example = replace(example, label=source.label)
            if source.prompt == "render":
                example = replace(example, prompt_messages=())
        except ValueError as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{where}: {exc}") from None
        if example.uid in seen:
            raise DataError(f"{where}: duplicate prompt id {example.uid!r} (first seen at {seen[example.uid]})")
        seen[example.uid] = where
        examples.append(example)
    if not examples:
        raise DataError(f"{source.path}: holds no examples")
    return examples


def load_sources(
    sources: Sequence[DataSource], base_dir: Path | None = None, cache_dir: str | None = None
) -> list[Example]:
    """The examples of several sources, concatenated in order; prompt ids must be unique across all of them."""
    examples: list[Example] = []
    owner: dict[str, str] = {}
    for source in sources:
        for example in load_source(source, base_dir, cache_dir):
            if example.uid in owner:
                raise DataError(
                    f"{source.path}: prompt id {example.uid!r} also occurs in {owner[example.uid]}; "
                    "every (source, id) pair must be unique across the sources of a job"
                )
            owner[example.uid] = source.path
            examples.append(example)
    return examples


@dataclass(frozen=True)
class Datasets:
    train: list[Example]
    eval: list[Example]


def load_data(config: DataConfig, base_dir: Path | None = None, cache_dir: str | None = None) -> Datasets:
    """The train and eval examples of a job's data config. Eval ids may repeat train ids (different sets)."""
    train = load_sources(config.train, base_dir, cache_dir)
    evaluation = load_sources(config.eval, base_dir, cache_dir) if config.eval else []
    return Datasets(train=train, eval=evaluation)


def prompt_ids_for(example: Example, tokenizer: Any, rollout: RolloutConfig) -> list[int]:
    """The prompt of `example`: its row's own chat prompt as the reference renders it, else our wording in
    `rollout.prompt_style`; the newest `rollout.max_prompt_tokens` tokens either way."""
    if example.prompt_messages:
        return build_reference_prompt_ids(tokenizer, example.prompt_messages, rollout.max_prompt_tokens)
    return build_prompt_ids(tokenizer, example.question, rollout.max_prompt_tokens, rollout.prompt_style)


def group_by_dataset(examples: Sequence[Example]) -> dict[str, list[Example]]:
    """Examples per data set label (for per-data-set eval metrics), in first-seen order."""
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.dataset, []).append(example)
    return groups


def first_per_dataset(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """The first `limit` examples of each data set, data set after data set (all of them, in order, when None)."""
    if limit is None:
        return list(examples)
    return [example for group in group_by_dataset(examples).values() for example in group[:limit]]


def fingerprint(examples: Sequence[Example]) -> str:
    """A short digest of the examples' prompt ids, in order: a resumed run checks it sees the same data."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.uid.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------
# Sampling


class EpochSampler:
    """Shuffled batches of indices into `size` items, deterministic from `seed` and resumable exactly.

    Epoch e visits a permutation drawn from `(seed, e)` alone (numpy's PCG64, stable across versions), so any
    position can be rebuilt from `(epoch, position)`. Batches never span two epochs: when fewer than
    `batch_size` items remain in an epoch they are skipped and the next epoch starts (as a data loader with
    `drop_last`), so no prompt appears twice in one batch.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order_epoch = -1
        self._order = np.arange(size)

    def order(self, epoch: int) -> np.ndarray:
        """The visiting order of `epoch`."""
        if epoch != self._order_epoch:
            if self.shuffle:
                rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed % 2**64, epoch])))
                self._order = rng.permutation(self.size)
            else:
                self._order = np.arange(self.size)
            self._order_epoch = epoch
        return self._order

    def next_batch(self, batch_size: int) -> list[int]:
        if not 1 <= batch_size <= self.size:
            raise ValueError(f"batch_size must lie in [1, {self.size}] (the number of items), got {batch_size}")
        if self.position + batch_size > self.size:
            self.epoch += 1
            self.position = 0
        batch = self.order(self.epoch)[self.position : self.position + batch_size]
        self.position += batch_size
        return [int(i) for i in batch]

    def state_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` was taken; the sampler must be built over the same data and seed."""
        for key in ("size", "seed", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state.get(key)!r}, this sampler has {getattr(self, key)!r}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.size:
            raise ValueError(f"sampler state has an impossible position (epoch {epoch}, position {position})")
        self.epoch, self.position = epoch, position


class PromptStream:
    """The training examples in shuffled batches, resumable: `state_dict` goes into the learner's checkpoint."""

    def __init__(self, examples: Sequence[Example], seed: int = 0, shuffle: bool = True) -> None:
        if not examples:
            raise ValueError("no training examples")
        self.examples = list(examples)
        self.sampler = EpochSampler(len(self.examples), seed=seed, shuffle=shuffle)
        self._fingerprint = fingerprint(self.examples)

    def next_batch(self, batch_size: int) -> list[Example]:
        return [self.examples[i] for i in self.sampler.next_batch(batch_size)]

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self._fingerprint:
            raise ValueError(
                "the checkpoint's data position belongs to different training data "
                f"(fingerprint {state.get('fingerprint')!r}, this data has {self._fingerprint!r})"
            )
        self.sampler.load_state_dict(state["sampler"])
