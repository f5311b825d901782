"""The one vocabulary of searchr1: every stream message and the training JobSpec.

Messages travel through Redis as msgpack. Token arrays (ids, masks, logprobs) are carried as raw little-endian
numpy bytes, never as lists of numbers, so a 4096-token trajectory stays compact on the wire.
"""

from __future__ import annotations

import copy
import math
import time
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import unquote, urlparse

import msgpack
import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.prompts import PromptStyle

SCHEMA_VERSION = 1


class ContractError(ValueError):
    """A payload or spec that does not fit the contract; the message names the field path and the problem."""


def describe_validation_error(error: ValidationError, what: str) -> str:
    """One readable sentence per problem: `<what>.<field.path>: <reason>`."""
    lines = []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"]) or "(root)"
        lines.append(f"{what}.{path}: {problem['msg']}")
    return "; ".join(lines)


# --------------------------------------------------------------------------------------------------------
# Token arrays: numpy inside the process, raw bytes on the wire, plain lists in JSON (API responses).


def _array_type(dtype: str) -> Any:
    np_dtype = np.dtype(dtype).newbyteorder("<")

    limits = np.iinfo(np_dtype) if np_dtype.kind in "iu" else None

    def validate(value: Any) -> np.ndarray:
        if isinstance(value, bytes | bytearray | memoryview):  # the wire format: already the right dtype
            if len(value) % np_dtype.itemsize:
                raise ValueError(f"byte length {len(value)} is not a multiple of {np_dtype.itemsize} ({np_dtype.name})")
            return np.frombuffer(value, dtype=np_dtype)
        if isinstance(value, np.ndarray):
            array = value
        elif isinstance(value, list | tuple):
            try:
                array = np.asarray(value, dtype=np_dtype)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ValueError(f"cannot read as {np_dtype.name} array: {exc}") from None
        else:
            raise ValueError(f"expected an array, bytes or a list of numbers, got {type(value).__name__}")
        if array.ndim != 1:
            raise ValueError(f"expected a 1-D array, got shape {array.shape}")
        if limits is not None and array.size and array.dtype != np_dtype:
            if array.dtype.kind == "f":
                raise ValueError("expected integers, got floating-point values")
            if array.min() < limits.min or array.max() > limits.max:
                raise ValueError(f"values must lie in [{limits.min}, {limits.max}] ({np_dtype.name})")
        return array.astype(np_dtype, copy=False)

    def serialize(array: np.ndarray, info: SerializationInfo) -> Any:
        if info.mode == "json":
            return array.tolist()
        return np.ascontiguousarray(array, dtype=np_dtype).tobytes()

    return Annotated[
        np.ndarray,
        PlainValidator(validate),
        PlainSerializer(serialize),
    ]


TokenIds = _array_type("int32")
Mask = _array_type("uint8")
Logprobs = _array_type("float32")


def _new_id() -> str:
    return uuid.uuid4().hex


class _Strict(BaseModel):
    """Unknown fields are errors and floats are finite: JSON's `Infinity`/`NaN` (or `1e999`) would be stored as
    null and could never be read back."""

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, validate_assignment=False, allow_inf_nan=False
    )


# Upper bounds of counts and sizes, so no spec or message asks for unbounded work or storage.
MAX_STEPS = 10_000_000
MAX_ITEMS = 1_000_000  # prompts per step, batch sizes, examples per data source
MAX_TOKENS = 1_048_576
MAX_SEED = 2**32 - 1  # what numpy's and torch's generators take
MAX_TEXT = 4096  # model ids, paths, URLs
MAX_TIMEOUT_S = 7 * 24 * 3600.0
# Job ids name Redis keys and Prometheus labels: short, and no ':' to step out of the key namespace.
JobId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
# A learner's metric may diverge (a NaN loss): events report it as it is (JSON shows null).
AnyFloat = Annotated[float, Field(allow_inf_nan=True)]


# --------------------------------------------------------------------------------------------------------
# Stream messages


def dataset_label(source: str) -> str:
    """The data set part of a source `dataset:split:origin` (`hotpotqa:train:...` -> `hotpotqa`), a bounded label
    for metrics."""
    return source.split(":", 1)[0] or "unknown"


class Message(_Strict):
    """Base of every stream message: a unique id (consumers deduplicate on it) and the schema version."""

    kind: ClassVar[str] = "message"
    msg_id: str = Field(default_factory=_new_id, min_length=1, max_length=128)
    schema_version: int = SCHEMA_VERSION
    created_at: float = Field(default_factory=time.time)

    def to_wire(self) -> bytes:
        return msgpack.packb(self.model_dump(mode="python"), use_bin_type=True)

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        try:
            payload = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.UnpackException, TypeError) as exc:
            raise ContractError(f"{cls.__name__}: payload is not valid msgpack ({exc})") from None
        if not isinstance(payload, dict):
            raise ContractError(f"{cls.__name__}: payload must be a map, got {type(payload).__name__}")
        version = payload.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ContractError(
                f"{cls.__name__}.schema_version: got {version}, this build reads version {SCHEMA_VERSION}"
            )
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise ContractError(describe_validation_error(exc, cls.__name__)) from None


class FormatScoreConfig(_Strict):
    """Scores of the format-aware reward (defaults: the reference's second paper); the reward tier scores with it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    correct_valid: float = 1.0
    correct_invalid: float = 0.8
    wrong_valid: float = 0.2
    wrong_invalid: float = 0.1
    no_answer_valid: float = 0.2
    no_answer_invalid: float = 0.0
    retrieval_bonus: float = Field(0.0, ge=0, description="added to a wrong answer whose search found a gold")


class RewardConfig(_Strict):
    kind: Literal["em", "f1", "em_format"] = "em"
    format_scores: FormatScoreConfig = Field(default_factory=FormatScoreConfig)
    compat: Literal["ours", "reference"] = Field(
        "ours", description="ours: score the response with our fixes; reference: score prompt + response exactly as "
        "the reference's qa_em.py / qa_em_format.py do, quirks included (reward.reference)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check_reference(self) -> Self:
        """The reference has no F1 reward, and builds its format reward from three scores: compat reference
        takes structure = wrong_valid, final = wrong_invalid, retrieval = retrieval_bonus, and refuses other
        scores that it would silently replace."""
        if self.compat != "reference":
            return self
        if self.kind == "f1":
            raise ValueError("compat 'reference' scores kind em or em_format; the reference has no f1 reward")
        if self.kind == "em_format":
            s = self.format_scores
            derived = {"correct_valid": 1.0, "correct_invalid": 1.0 - s.wrong_valid, "no_answer_valid": s.wrong_valid,
                       "no_answer_invalid": 0.0}  # fmt: skip
            wrong = [f"{name}={getattr(s, name)} (the reference gives {value:g})" for name, value in derived.items()
                     if not math.isclose(getattr(s, name), value, abs_tol=1e-9)]  # fmt: skip
            if wrong:
                raise ValueError(f"compat 'reference' derives these format scores from wrong_valid: {', '.join(wrong)}")
        return self


class EpisodeConfig(_Strict):
    """How one episode plays (rollout.agent): turns, tokens per turn, the caps, sampling and retrieval. The one
    shape of these settings: a JobSpec's rollout section holds them (it extends this class) and every
    RolloutRequest carries them as this object. Defaults are the reference's (shared/notes/SEARCH-R1.md)."""

    max_turns: int = Field(
        4, ge=0, le=64, description="model turns before the last one, in which a search is not executed"
    )
    max_tokens_per_turn: int = Field(500, ge=1, le=32768)
    max_obs_tokens: int = Field(500, ge=1, le=MAX_TOKENS, description="cap of one information block")
    max_context_tokens: int = Field(
        4096, ge=16, le=MAX_TOKENS, description="tokens the model sees per turn, the turn's generation included"
    )
    max_prompt_tokens: int = Field(2048, ge=8, le=MAX_TOKENS, description="the prompt's cap (newest tokens kept)")
    temperature: float = Field(1.0, ge=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    topk: int = Field(3, ge=1, le=100, description="passages per search")

    @model_validator(mode="after")
    def _check_lengths(self) -> Self:
        if self.max_prompt_tokens >= self.max_context_tokens:
            raise ValueError(
                f"max_prompt_tokens ({self.max_prompt_tokens}) must be below "
                f"max_context_tokens ({self.max_context_tokens})"
            )
        if self.max_tokens_per_turn >= self.max_context_tokens:
            raise ValueError(
                f"max_context_tokens ({self.max_context_tokens}) must exceed max_tokens_per_turn "
                f"({self.max_tokens_per_turn}): the model's input is the newest "
                "max_context_tokens - max_tokens_per_turn tokens"
            )
        return self

    @property
    def max_input_tokens(self) -> int:
        """The newest tokens of prompt + response the model reads per turn: its turn fits the context after them."""
        return self.max_context_tokens - self.max_tokens_per_turn

    def greedy(self) -> Self:
        """The same episode decoded greedily (temperature 0, top_p 1): how evaluations sample."""
        return self.model_copy(update={"temperature": 0.0, "top_p": 1.0})


class RolloutRequest(Message):
    """Ask the rollout tier for `n_samples` episodes of one prompt under a given policy version."""

    kind: ClassVar[str] = "rollout_request"
    job_id: JobId
    prompt_uid: str = Field(min_length=1, description="globally unique across data sources (GRPO groups)")
    prompt_ids: TokenIds
    n_samples: int = Field(1, ge=1, le=1024)
    policy_version: int = Field(0, ge=0)
    golden_answers: list[str] = Field(default_factory=list)
    data_source: str = ""
    episode: EpisodeConfig = Field(default_factory=EpisodeConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    is_eval: bool = False
    search_enabled: bool = Field(True, description="False: every search finds nothing (an eval's no-search control)")
    turn_prefix_ids: TokenIds = Field(
        default_factory=lambda: np.zeros(0, dtype=np.int32),
        description="written by the environment before every model turn (loss mask 0), e.g. an opened <think> "
        "block (services.prompts.turn_prefix)",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.prompt_ids.size == 0:
            raise ValueError("prompt_ids must hold at least one token")
        return self


class VersionSpan(_Strict):
    """Response tokens [start, end) were sampled by policy `version`."""

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    version: int = Field(ge=0)


class Trajectory(Message):
    """One finished episode, token-in/token-out: the exact sampled ids with a loss mask and behaviour logprobs."""

    kind: ClassVar[str] = "trajectory"
    job_id: JobId
    request_id: str = Field(min_length=1)
    prompt_uid: str = Field(min_length=1)
    sample_index: int = Field(0, ge=0)
    prompt_ids: TokenIds
    response_ids: TokenIds
    loss_mask: Mask = Field(description="1 for model-generated tokens, 0 for environment-inserted ones")
    logprobs: Logprobs = Field(description="behaviour logprobs per response token (0 where loss_mask is 0)")
    version_spans: list[VersionSpan] = Field(default_factory=list)
    response_text: str = ""
    prompt_text: str = Field("", description="the prompt decoded (filled for reward.compat 'reference', which "
                             "scores prompt + response)")  # fmt: skip
    golden_answers: list[str] = Field(default_factory=list)
    data_source: str = ""
    turns: int = Field(0, ge=0)
    searches: int = Field(0, ge=0)
    valid_actions: int = Field(0, ge=0)
    finished: bool = False
    reward: RewardConfig = Field(default_factory=RewardConfig)
    is_eval: bool = False
    timings: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Self:
        n = self.response_ids.size
        if self.loss_mask.size != n:
            raise ValueError(f"loss_mask has {self.loss_mask.size} entries for {n} response tokens")
        if self.logprobs.size != n:
            raise ValueError(f"logprobs has {self.logprobs.size} entries for {n} response tokens")
        if n and int(self.loss_mask.max()) > 1:
            raise ValueError("loss_mask may only hold 0 and 1")
        for span in self.version_spans:
            if not span.start <= span.end <= n:
                raise ValueError(f"version span [{span.start}, {span.end}) lies outside the {n} response tokens")
        return self

    @property
    def oldest_version(self) -> int:
        """The oldest policy version that sampled any token: what the staleness bound is checked against."""
        return min((span.version for span in self.version_spans), default=0)


class ScoredTrajectory(Message):
    """A trajectory with its outcome reward, sent to the learner of its job."""

    kind: ClassVar[str] = "scored_trajectory"
    trajectory: Trajectory
    reward: float
    reward_kind: str = "em"
    extracted_answer: str | None = None
    format_valid: bool = False
    retrieval_hit: bool = False


class WeightFormat(StrEnum):
    """How announced weights travel. One transport today (a safetensors folder on shared storage); an
    announcement in any other format is refused at decoding (dead-lettered), never half-loaded."""

    SAFETENSORS = "safetensors"


def weights_folder(uri: str) -> Path:
    """The local folder a weights URI names: a `file://` URI (shared storage is mounted at the same path
    everywhere; as written by `Path.as_uri`, percent-encoded) or a plain path. Any other scheme is a ValueError."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    raise ValueError(f"weights uri {uri!r} is not a file:// URI: only local paths and file:// URIs load here")


class WeightsPublished(Message):
    """Policy weights of `version` are ready at `uri`; rollout engines pause, load and resume."""

    kind: ClassVar[str] = "weights_published"
    job_id: JobId
    version: int = Field(ge=0)
    uri: str = Field(min_length=1)
    format: WeightFormat = WeightFormat.SAFETENSORS
    checksum: str = ""
    step: int = Field(0, ge=0)


class JobState(StrEnum):
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobEvent(Message):
    """Something a person watching a job wants to know: a state change, a log line, metrics, a checkpoint."""

    kind: ClassVar[str] = "job_event"
    job_id: JobId
    # progress: how far a long phase has got, in episodes scored: data {"phase": "eval" | "rollout" (a training
    # step's), "done", "total"}
    event: Literal["state", "log", "metrics", "checkpoint", "eval", "progress"]
    state: JobState | None = None
    step: int | None = Field(None, ge=0)
    message: str = ""
    data: dict[str, AnyFloat | int | str | bool] = Field(default_factory=dict)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.kind: cls for cls in (RolloutRequest, Trajectory, ScoredTrajectory, WeightsPublished, JobEvent)
}


# --------------------------------------------------------------------------------------------------------
# JobSpec: what a user submits. Defaults are the reference's (shared/notes/SEARCH-R1.md).


class _AlgorithmBase(_Strict):
    actor_lr: float = Field(1e-6, gt=0, le=1.0)
    actor_warmup_ratio: float = Field(0.285, ge=0, le=1)
    kl_coef: float = Field(0.001, ge=0, le=100)
    clip_eps: float = Field(0.2, gt=0, lt=1)
    entropy_coef: float = Field(0.001, ge=0, le=100)
    grad_clip: float = Field(1.0, gt=0, le=1e6)
    epochs: int = Field(1, ge=1, le=100)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.01, ge=0, le=10)
    prompts_per_step: int = Field(512, ge=1, le=MAX_ITEMS)
    group_size: int = Field(1, ge=1, le=64, description="samples per prompt")
    mini_batch_size: int = Field(
        256, ge=1, le=MAX_ITEMS, description="trajectories per optimiser step (prompts_per_step x group_size of "
        "them make a training step), as the reference's ppo_mini_batch_size",
    )  # fmt: skip
    micro_batch_size: int = Field(
        64, ge=1, le=MAX_ITEMS, description="trajectories per forward/backward, summed over the learner's ranks "
        "(each takes micro_batch_size / learner_workers, at least 1), as the reference's ppo_micro_batch_size",
    )  # fmt: skip
    max_staleness: int = Field(
        0, ge=0, le=1000, description="policy versions a trajectory may lag the policy it trains: the learner "
        "keeps rollouts for up to this many future steps in flight while it updates (0 = synchronous on-policy, "
        "as the reference)",
    )  # fmt: skip
    behaviour_weight_cap: float = Field(
        5.0, gt=1, le=1000, description="decoupled PPO for stale trajectories: their tokens' loss is weighted by "
        "exp(proximal - behaviour logprob), capped at this",
    )  # fmt: skip
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass (policy and critic): less memory, ~1/3 "
        "more compute; the reference's presets turn it on",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check_batches(self) -> Self:
        trajectories = self.prompts_per_step * self.group_size
        if self.mini_batch_size > trajectories:
            raise ValueError(
                f"mini_batch_size ({self.mini_batch_size}) counts trajectories and cannot exceed prompts_per_step x "
                f"group_size ({self.prompts_per_step} x {self.group_size} = {trajectories})"
            )
        if self.micro_batch_size > self.mini_batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) cannot exceed mini_batch_size ({self.mini_batch_size})"
            )
        if any(not 0 <= beta < 1 for beta in self.adam_betas):
            raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        return self


class PPOConfig(_AlgorithmBase):
    name: Literal["ppo"] = "ppo"
    critic_lr: float = Field(1e-5, gt=0, le=1.0)
    critic_warmup_ratio: float = Field(0.015, ge=0, le=1)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    kl_in_reward: bool = True
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(1.0, ge=0, le=1)
    value_clip: float = Field(0.5, gt=0, le=1e6)


class GRPOConfig(_AlgorithmBase):
    name: Literal["grpo"] = "grpo"
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_in_reward: bool = False
    group_size: int = Field(5, ge=2, le=64, description="samples per prompt; advantages are normalised per group")
    std_eps: float = Field(1e-6, gt=0, le=1)
    skip_uniform_groups: bool = Field(
        False, description="update on the groups whose rewards differ only: an all-equal group has advantage 0, so "
        "it adds compute but no policy gradient (its KL and entropy terms go with it; the loss is the token mean of "
        "the groups kept). The step keeps its count of optimiser steps; a step with no such group makes none",
    )  # fmt: skip


class DataSource(_Strict):
    """A local JSONL/parquet file (ours or Search-R1's format) or a Hugging Face dataset id."""

    path: str = Field(min_length=1, max_length=MAX_TEXT)
    format: Literal["auto", "searchr1", "jsonl", "hf"] = "auto"
    split: str = Field("train", max_length=256)
    limit: int | None = Field(None, ge=1, le=MAX_ITEMS)
    name: str | None = Field(None, max_length=256)
    label: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][\w.-]*$",
        description="name of its eval results; default: the data set each row's `source` names",
    )
    prompt: Literal["verbatim", "render"] = Field(
        "verbatim", description="a Search-R1 row's prompt: verbatim (its chat messages, rendered with the chat "
        "template as the reference does) or render (our wording, rollout.prompt_style); rows in our format, which "
        "carry no prompt, always render",
    )  # fmt: skip


class DataConfig(_Strict):
    train: list[DataSource] = Field(default_factory=list, max_length=64, description="required by a training job")
    eval: list[DataSource] = Field(default_factory=list, max_length=64)
    eval_without_search: bool = Field(
        False, description="each eval also runs with search finding nothing: the control that shows what searching adds"
    )
    shuffle_seed: int = Field(0, ge=0, le=MAX_SEED)


class RolloutConfig(EpisodeConfig):
    """A job's rollout section: its episodes' settings (`episode`, what each RolloutRequest carries) and how the
    learner asks for them."""

    request_timeout_s: float = Field(600.0, gt=0, le=MAX_TIMEOUT_S)
    prompt_style: PromptStyle = Field(
        "instruct", description="instruct: the rules, then the question; few_shot: worked examples first, for small "
        "models (services.prompts)",
    )  # fmt: skip

    @property
    def episode(self) -> EpisodeConfig:
        """The episode settings alone, as every RolloutRequest of the job carries them."""
        return EpisodeConfig.model_validate(self.model_dump(include=set(EpisodeConfig.model_fields)))


class ResourcesConfig(_Strict):
    learner_nodes: int = Field(1, ge=1, le=1024)
    learner_gpus_per_node: int = Field(0, ge=0, le=16)
    learner_cpus_per_worker: float = Field(1.0, gt=0, le=1024)
    learner_workers: int = Field(
        1, ge=1, le=1024, description="Ray Train workers, one FSDP rank each; rank 0 drives the job's streams"
    )
    rollout_replicas: int = Field(1, ge=1, le=1024)
    rollout_gpus_per_replica: float = Field(0, ge=0, le=16)
    learner_cpu_bf16: bool = Field(
        False, description="a CPU learner runs forward and backward under bf16 autocast (weights and optimiser stay "
        "fp32) where its CPU has AVX512-BF16 or AMX: about twice as fast there; elsewhere it computes in fp32, "
        "since emulated bf16 is ~200x slower; GPU learners always compute in bf16",
    )  # fmt: skip


class ScheduleConfig(_Strict):
    total_steps: int = Field(1005, ge=1, le=MAX_STEPS)
    save_interval: int = Field(100, ge=1, le=MAX_STEPS)
    eval_interval: int = Field(100, ge=1, le=MAX_STEPS)
    eval_before_train: bool = True
    seed: int = Field(0, ge=0, le=MAX_SEED)
    time_limit_s: float | None = Field(
        None,
        gt=0,
        le=365 * 24 * 3600.0,
        description="wall-clock budget of one learner run: the first step that ends past it is the last, with "
        "its eval and checkpoint, and the job succeeds with the steps done (a resumed run gets a fresh budget)",
    )
    max_restarts: int = Field(
        0,
        ge=0,
        le=100,
        description="times a learner that died without reporting its end (killed, out of memory, node lost) is "
        "relaunched from its last checkpoint, with backoff, before the job fails; Ray Train restarts a failed "
        "rank as often within one launch",
    )


class JobSpec(_Strict):
    """A training job, or an evaluation (`kind: eval`: greedy EM of `model` on `data.eval`, nothing trained).
    Unknown fields are errors; `from_preset` builds one from a named preset plus overrides."""

    name: str = Field("searchr1-job", min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    kind: Literal["train", "eval"] = "train"
    model: str = Field(min_length=1, max_length=MAX_TEXT, description="HF id, local path, or an offline registry name")
    algorithm: PPOConfig | GRPOConfig = Field(discriminator="name")
    data: DataConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @field_validator("data")
    @classmethod
    def _check_data(cls, data: DataConfig, info: ValidationInfo) -> DataConfig:
        kind = info.data.get("kind")
        if kind == "train" and not data.train:
            raise ValueError("a training job needs at least one data.train source")
        if kind == "eval" and not data.eval:
            raise ValueError("an evaluation needs at least one data.eval source")
        return data

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> JobSpec:
        """Validate a user's spec, raising ContractError with every field path that is wrong."""
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise ContractError(describe_validation_error(exc, "JobSpec")) from None

    def to_json(self) -> str:
        """The spec as stored: JSON that parses back to the same spec, checked (a value that would not survive
        the trip is refused here rather than poisoning every later read of the store)."""
        text = self.model_dump_json()
        try:
            stored = type(self).model_validate_json(text)
        except ValidationError as exc:
            raise ContractError(describe_validation_error(exc, "JobSpec")) from None
        if stored != self:
            raise ContractError("JobSpec: the spec does not read back as written; refusing to store it")
        return text

    @classmethod
    def from_preset(cls, preset: str, overrides: dict[str, Any] | None = None) -> JobSpec:
        if preset not in PRESETS:
            raise ContractError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        return cls.parse(deep_merge(PRESETS[preset], overrides or {}))


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overrides` applied; nested maps merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# The reference's training scripts (PeterGriffinJin/Search-R1), each reproduced by a preset of its name:
# scripts/nq_hotpotqa/v0.2/train_{ppo,grpo}.sh (NQ + HotpotQA, 4 turns, eval every 100 steps, PPO top_p 1.0) and
# the repository root's train_{ppo,grpo}.sh (NQ alone, 2 turns, eval every 50 steps, top_p 0.95). Everything a
# script does not set is verl's ppo_trainer.yaml default, which our contract's defaults are; `model` is each
# script's uncommented BASE_MODEL. tests/unit/test_presets.py holds the reference's values.
_NQ_HOTPOTQA = {
    "train": [{"path": "PeterJinGo/nq_hotpotqa_train", "format": "hf", "split": "train"}],
    "eval": [{"path": "PeterJinGo/nq_hotpotqa_train", "format": "hf", "split": "test"}],
}
_NQ_SEARCH = {  # what scripts/data_process/nq_search.py writes, relative to the data directory
    "train": [{"path": "nq_search/train.parquet", "format": "searchr1"}],
    "eval": [{"path": "nq_search/test.parquet", "format": "searchr1"}],
}
_REFERENCE_ROLLOUT = {  # max_response_length, max_obs_length, max_start_length, max_prompt_length, retriever.topk
    "max_tokens_per_turn": 500, "max_obs_tokens": 500, "max_prompt_tokens": 2048, "max_context_tokens": 4096,
    "topk": 3, "temperature": 1.0,
}  # fmt: skip
_REFERENCE_RESOURCES = {"learner_gpus_per_node": 8, "learner_workers": 8, "rollout_gpus_per_replica": 1}


def _reference_preset(
    name: str, model: str, algorithm: str, data: dict[str, Any], max_turns: int, top_p: float, eval_interval: int
) -> dict[str, Any]:
    return {
        "name": name,
        "model": model,
        "algorithm": {"name": algorithm, "gradient_checkpointing": True},
        "data": data,
        "rollout": {**_REFERENCE_ROLLOUT, "max_turns": max_turns, "top_p": top_p},
        "resources": _REFERENCE_RESOURCES,
        "schedule": {
            "total_steps": 1005,
            "save_interval": 100,
            "eval_interval": eval_interval,
            "eval_before_train": True,
        },
    }


PRESETS: dict[str, dict[str, Any]] = {
    "reference-v02-ppo": _reference_preset("reference-v02-ppo", "Qwen/Qwen2.5-7B", "ppo", _NQ_HOTPOTQA, 4, 1.0, 100),
    "reference-v02-grpo": _reference_preset(
        "reference-v02-grpo", "Qwen/Qwen2.5-7B", "grpo", _NQ_HOTPOTQA, 4, 0.95, 100
    ),
    "reference-root-ppo": _reference_preset(
        "reference-root-ppo", "meta-llama/Llama-3.2-3B", "ppo", _NQ_SEARCH, 2, 0.95, 50
    ),
    "reference-root-grpo": _reference_preset("reference-root-grpo", "Qwen/Qwen2.5-3B", "grpo", _NQ_SEARCH, 2, 0.95, 50),
    # A job two CPU cores finish in minutes on the embedded platform that `make demo` leaves behind: `searchr1 up`
    # serves the index of the demo's generated task (seed 0), which holds the answers of its train questions
    # (relative paths are read where `searchr1 up` runs). The demo's job is this one on its own data and schedule
    # (searchr1/demo.py says why each setting): 4 steps (1-2 minutes each on two cores), with the single-hop
    # held-out set evaluated before and after.
    "cpu-small": {
        "name": "cpu-small",
        "model": "smollm2-135m-instruct",
        "algorithm": {
            "name": "grpo",
            "group_size": 6,
            "prompts_per_step": 8,
            "mini_batch_size": 24,
            "micro_batch_size": 6,
            "actor_lr": 5e-5,
            "actor_warmup_ratio": 0.0,
            "kl_coef": 0.0,
            "entropy_coef": 0.0,
            "skip_uniform_groups": True,
        },
        "data": {
            "train": [{"path": "var/platform/demo-data/generated-0/train.jsonl", "format": "jsonl"}],
            "eval": [{"path": "var/platform/demo-data/generated-0/fictional_single_hop.jsonl", "format": "jsonl"}],
        },
        "rollout": {
            "prompt_style": "one_shot",
            "max_turns": 2,
            "max_tokens_per_turn": 48,
            "max_obs_tokens": 96,
            "max_context_tokens": 768,
            "max_prompt_tokens": 320,
            "temperature": 0.5,
            "top_p": 1.0,
            "topk": 1,
            "request_timeout_s": 900,
        },
        "reward": {"kind": "em"},
        "resources": {"learner_workers": 1, "learner_cpus_per_worker": 1, "learner_cpu_bf16": True},
        "schedule": {"total_steps": 4, "save_interval": 4, "eval_interval": 4},
    },
}
# The names of earlier releases: the paper's configuration is the v0.2 scripts'.
PRESETS["paper-ppo"] = PRESETS["reference-v02-ppo"]
PRESETS["paper-grpo"] = PRESETS["reference-v02-grpo"]
