"""The learner end to end on a real Redis: the real rollout worker (HF engine, the programmed tiny Qwen2 of
tests/programmed_model.py, a retriever on loopback), the real reward worker, and the real learner
(`trainer.train.main`), in process and under Ray Train.

The programmed model searches once, then answers "Paris" whatever it is asked, so a trajectory's EM is known from
its question's gold answer: half the generated train questions have the gold "Paris", every eval question has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import redis
import torch
from programmed_model import program_model
from safetensors.torch import load_file
from support import fake_retriever
from transformers import AutoTokenizer

from reward.worker import RewardSettings, build_worker
from rollout.worker import RolloutSettings, RolloutWorker, build_engine
from services.config import Settings
from services.contracts import (
    DataConfig,
    JobEvent,
    JobState,
    RolloutRequest,
    ScoredTrajectory,
    Trajectory,
    VersionSpan,
    WeightsPublished,
)
from services.models import resolve_model
from services.streams import DATA_FIELD, Streams, connect
from services.weight_files import folder_checksum, verify
from services.worker import StreamWorker
from trainer.collector import Collector
from trainer.data import PromptStream, load_data
from trainer.train import main

MODEL = "tiny-random-qwen2"
ANSWER = "Paris"  # what the programmed model answers
EVAL_DATASET = "nq_open"  # the label of eval/nq_test.jsonl's sources
DOCS = [("1", '"Paris"\nParis is the capital of France.')]


@pytest.fixture(scope="module")
def programmed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 programmed to search, then answer "Paris": the model every job here trains or evaluates."""
    return program_model(Path(resolve_model(MODEL)), tmp_path_factory.mktemp("programmed"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files these jobs read, in the data kit's layout: train questions whose gold alternates between the
    programmed model's answer and another, eval questions whose gold is its answer."""
    files = {
        "train/train.jsonl": [(f"train-{i}", f"what is thing {i} called?", ANSWER if i % 2 else f"name {i}",
                               "hotpotqa:train:generated") for i in range(16)],
        "eval/nq_test.jsonl": [(f"nq_open_dev_{i}", f"where is item {i}?", ANSWER, "nq_open:dev:generated")
                               for i in range(4)],
        "eval/hotpotqa_dev.jsonl": [(f"hotpotqa_dev_{i}", f"where was {i} made?", ANSWER, "hotpotqa:dev:generated")
                                    for i in range(2)],
    }  # fmt: skip
    root = tmp_path_factory.mktemp("data")
    for name, rows in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [{"id": uid, "question": q, "golden_answers": [a], "source": src} for uid, q, a, src in rows]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def job_spec(model: Path, algorithm: str, total_steps: int, eval_questions: int = 0, **algo: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"train": [{"path": "train/train.jsonl", "limit": 12}], "shuffle_seed": 7}
    if eval_questions:
        data["eval"] = [{"path": "eval/nq_test.jsonl", "limit": eval_questions}]
    return {
        "name": f"test-{algorithm}",
        "model": str(model),
        "algorithm": {
            "name": algorithm, "prompts_per_step": 2, "group_size": 2, "mini_batch_size": 4, "micro_batch_size": 2,
            "actor_lr": 1e-3, "actor_warmup_ratio": 0.0, **algo,
        },
        "data": data,
        "rollout": {"max_tokens_per_turn": 6, "max_prompt_tokens": 256, "max_context_tokens": 512,
                    "request_timeout_s": 30},
        "schedule": {"total_steps": total_steps, "save_interval": 1, "eval_interval": 100,
                     "eval_before_train": bool(eval_questions)},
    }  # fmt: skip


@pytest.fixture
def learner_env(settings: Settings, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """SEARCHR1_* for a learner in this process: the test's Redis and prefix, the shared data folder."""
    for key in [k for k in os.environ if k.startswith("SEARCHR1_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SEARCHR1_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("SEARCHR1_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("SEARCHR1_DATA_DIR", str(data_dir))
    return settings


T = TypeVar("T")


class Tiers:
    """The rollout worker (HF engine on `model`) and the reward worker, on an event loop in a background thread,
    with a retriever on loopback. A consumer group that reads nothing ("tap") keeps every rollout request and
    trajectory in their queues, for the test to read."""

    def __init__(self, settings: Settings, model: Path) -> None:
        # The learner shares this process's cores: do not let a slow episode's pending entry look abandoned.
        self.settings = settings.model_copy(update={"reclaim_idle_ms": 60_000})
        self.model = model
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: Streams | None = None
        self._stop: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="tiers", daemon=True)
        self._retriever = contextlib.ExitStack()
        self.error: BaseException | None = None

    async def _main(self) -> None:
        retriever_url = self._retriever.enter_context(fake_retriever(DOCS))["url"]
        rollout_settings = RolloutSettings(**self.settings.model_dump(), engine="hf", model=str(self.model),
                                           retriever_url=retriever_url, concurrency=4)  # fmt: skip
        self._streams = streams = Streams(connect(self.settings), self.settings)
        try:
            rollout = RolloutWorker(rollout_settings, await build_engine(rollout_settings))
            for queue in (streams.rollout, streams.reward):
                await streams.ensure_group(queue, "tap")
            reward: StreamWorker[Trajectory] = build_worker(streams, RewardSettings(**self.settings.model_dump()))
            self._stop = [rollout.stop, reward.request_stop]
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            try:
                await asyncio.gather(rollout.run(), reward.run())
            finally:
                await rollout.close()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._ready.set()
            await streams.aclose()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def requests(self, job_id: str) -> list[RolloutRequest]:
        """Every rollout request of `job_id` so far, in order."""
        assert self._streams is not None
        entries = self._call(self._streams.entries(self._streams.rollout, RolloutRequest))
        return [e.message for e in entries if e.message is not None and e.message.job_id == job_id]

    def trajectories(self, job_id: str) -> list[Trajectory]:
        """Every trajectory the rollout worker made for `job_id` so far, in order."""
        assert self._streams is not None
        entries = self._call(self._streams.entries(self._streams.reward, Trajectory))
        return [e.message for e in entries if e.message is not None and e.message.job_id == job_id]

    def __enter__(self) -> Tiers:
        self._thread.start()
        self._ready.wait(120)
        if self.error is not None or self._loop is None:
            raise RuntimeError("the rollout and reward workers did not start") from self.error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None:
            for stop in self._stop:
                self._loop.call_soon_threadsafe(stop)
        self._thread.join(60)
        self._retriever.close()
        assert not self._thread.is_alive(), "the rollout and reward workers did not stop"


@pytest.fixture
def tiers(settings: Settings, programmed: Path) -> Iterator[Tiers]:
    with Tiers(settings, programmed) as running:
        yield running


def run_job(spec: dict[str, Any], job_id: str, output_dir: Path) -> int:
    job_file = output_dir.parent / f"{job_id}-{spec.get('schedule', {}).get('total_steps', 0)}.json"
    job_file.write_text(json.dumps(spec))
    return main(["--job", str(job_file), "--job-id", job_id, "--output-dir", str(output_dir), "--no-ray"])


def read_stream(settings: Settings, job_id: str, channel: str) -> list[bytes]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return [fields[DATA_FIELD] for _, fields in client.xrange(f"{settings.key_prefix}:job:{job_id}:{channel}")]
    finally:
        client.close()


def events(settings: Settings, job_id: str) -> list[JobEvent]:
    return [JobEvent.from_wire(data) for data in read_stream(settings, job_id, "events")]


def announced(settings: Settings, job_id: str) -> list[WeightsPublished]:
    return [WeightsPublished.from_wire(data) for data in read_stream(settings, job_id, "weights")]


def of_kind(found: list[JobEvent], kind: str) -> list[JobEvent]:
    return [event for event in found if event.event == kind]


def assert_step_metrics(
    tiers: Tiers, job_id: str, metrics: list[JobEvent], steps: list[int], trajectories: int
) -> None:
    assert [event.step for event in metrics] == steps
    rewards = step_rewards(tiers, job_id)
    for event in metrics:
        for key in ("reward_mean", "kl", "entropy", "policy_loss", "grad_norm", "rollout_seconds", "update_seconds"):
            assert isinstance(event.data[key], float) and math.isfinite(event.data[key]), (key, event.data)
        assert event.data["trajectories"] == event.data["distinct_trajectories"] == trajectories
        assert event.data["trajectories_seen"] == trajectories and event.data["duplicate_trajectories"] == 0
        assert event.data["reward_mean"] == pytest.approx(rewards[event.step]), "EM by the real reward worker"
        assert event.data["dropped_stale"] == 0 and event.data["staleness"] == 0
        assert abs(event.data["behaviour_kl"]) < 1e-3, "the learner recomputes the behaviour logprobs it was sent"


def step_rewards(tiers: Tiers, job_id: str) -> dict[int, float]:
    """Step -> the EM its trajectories must score: the share of its train samples whose gold is the answer every
    episode gives (a step's requests carry the version the step before it published)."""
    scores: dict[int, list[float]] = {}
    for request in tiers.requests(job_id):
        if not request.is_eval:
            right = float(request.golden_answers == [ANSWER])
            scores.setdefault(request.policy_version + 1, []).extend([right] * request.n_samples)
    return {step: sum(values) / len(values) for step, values in scores.items()}


def train_uids(tiers: Tiers, job_id: str, version: int) -> list[str]:
    return [r.prompt_uid for r in tiers.requests(job_id) if not r.is_eval and r.policy_version == version]


def test_grpo_job_trains_evaluates_checkpoints_and_resumes(
    learner_env: Settings, tiers: Tiers, programmed: Path, tmp_path: Path
) -> None:
    settings, job_id, output = learner_env, "grpo-job", tmp_path / "out"
    assert run_job(job_spec(programmed, "grpo", total_steps=2, eval_questions=2), job_id, output) == 0

    first = events(settings, job_id)
    states = of_kind(first, "state")
    assert [(e.state, e.message) for e in states] == [(JobState.RUNNING, ""), (JobState.SUCCEEDED, "trained 2 steps")]
    assert first[0].event == "state" and first[-1].state == JobState.SUCCEEDED
    evals = of_kind(first, "eval")
    assert [e.step for e in evals] == [0, 2], "eval before training and after the last step"
    for event in evals:
        assert set(event.data) == {f"eval_em/{EVAL_DATASET}", f"eval_valid_action/{EVAL_DATASET}"}
        assert event.data[f"eval_em/{EVAL_DATASET}"] == 1.0, "every eval question's gold is the model's answer"
        assert event.data[f"eval_valid_action/{EVAL_DATASET}"] > 0
    assert_step_metrics(tiers, job_id, of_kind(first, "metrics"), [1, 2], trajectories=4)
    # Each step reports its rollouts' progress before its metrics, from 0 to its 4 trajectories.
    rollout = [
        (e.step, e.data["done"], e.data["total"]) for e in of_kind(first, "progress") if e.data["phase"] == "rollout"
    ]
    assert [p for p in rollout if p[1] in (0, 4)] == [(0, 0, 4), (0, 4, 4), (1, 0, 4), (1, 4, 4)], rollout
    checkpoints = of_kind(first, "checkpoint")
    assert [e.step for e in checkpoints] == [1, 2]
    for event in checkpoints:
        folder = Path(str(event.data["path"]))
        assert (folder / "policy" / "model.safetensors").is_file() and (folder / "trainer_state.pt").is_file()
        assert json.loads((folder / "progress.json").read_text())["step"] == event.step
    weights = announced(settings, job_id)
    assert [(w.version, w.step) for w in weights] == [(1, 1), (2, 2)]
    assert len({verify(w) for w in weights}) == 2, "both kept versions verify against their checksums"
    assert len({folder_checksum(programmed), *(w.checksum for w in weights)}) == 3, "every step changes the policy"
    wanted = {r.msg_id: r.policy_version for r in tiers.requests(job_id)}
    served = [(t.request_id, t.oldest_version) for t in tiers.trajectories(job_id)]
    assert len(served) == 2 * 4 + 2 * 2 and all(wanted[r] == v for r, v in served), "sampled with stale weights"
    assert read_stream(settings, job_id, "scored") == [], "settled trajectories are trimmed from Redis"
    step1, step2 = train_uids(tiers, job_id, 0), train_uids(tiers, job_id, 1)
    assert len(step1) == len(step2) == 2 and not set(step1) & set(step2)

    # Resume: the same output folder with a longer schedule continues at step 2 and does exactly one more step.
    assert run_job(job_spec(programmed, "grpo", total_steps=3, eval_questions=2), job_id, output) == 0
    second = events(settings, job_id)[len(first) :]
    states = of_kind(second, "state")
    assert [(e.state, e.message) for e in states] == [
        (JobState.RUNNING, "resumed at step 2"), (JobState.SUCCEEDED, "trained 3 steps"),
    ]  # fmt: skip
    assert_step_metrics(tiers, job_id, of_kind(second, "metrics"), [3], trajectories=4)
    assert [e.step for e in of_kind(second, "eval")] == [3], "no eval before training when resuming"
    assert [e.step for e in of_kind(second, "checkpoint")] == [3]
    weights = announced(settings, job_id)[2:]
    assert [(w.version, w.step) for w in weights] == [(2, 2), (3, 3)], "the resumed policy is announced first"
    verify(weights[-1])
    # The data position continues: step 3 samples the sampler's third batch, not a fresh run's first.
    step3 = train_uids(tiers, job_id, 2)
    data = load_data(
        DataConfig(**job_spec(programmed, "grpo", 3)["data"]), base_dir=Path(os.environ["SEARCHR1_DATA_DIR"])
    )
    expected = PromptStream(data.train, seed=7)
    batches = [[e.uid for e in expected.next_batch(2)] for _ in range(3)]
    assert [step1, step2, step3] == batches
    assert not set(step3) & set(step1)


def test_with_max_staleness_1_the_next_steps_rollouts_are_in_flight_while_a_step_updates(
    learner_env: Settings, tiers: Tiers, programmed: Path, tmp_path: Path
) -> None:
    """Step n's requests go out once n - 2 steps are trained: steps 1 and 2 at version 0, step 3 at version 1
    (before step 2's update), nothing beyond the last step; no trajectory lags its update by more than one
    version; a checkpoint taken with step 2 in flight resumes at step 2's prompts."""
    settings, job_id = learner_env, "async-job"
    assert run_job(job_spec(programmed, "grpo", total_steps=3, max_staleness=1), job_id, tmp_path / "out") == 0
    found = events(settings, job_id)
    assert of_kind(found, "state")[-1].message == "trained 3 steps"
    by_version = [train_uids(tiers, job_id, version) for version in range(3)]
    data = load_data(
        DataConfig(**job_spec(programmed, "grpo", 3)["data"]), base_dir=Path(os.environ["SEARCHR1_DATA_DIR"])
    )
    expected = PromptStream(data.train, seed=7)
    batches = [[e.uid for e in expected.next_batch(2)] for _ in range(3)]
    assert by_version == [batches[0] + batches[1], batches[2], []], "sent ahead by one step, never beyond the last"
    metrics = of_kind(found, "metrics")
    assert [e.step for e in metrics] == [1, 2, 3]
    for event in metrics:
        assert event.data["trajectories"] == event.data["distinct_trajectories"] == 4
        assert event.data["dropped_stale"] == 0 and 0 <= event.data["staleness"] <= 1, event.data
    assert metrics[0].data["staleness"] == 0, "step 1's requests went out at version 0 and train version 0"
    # Sent with step 1's, step 2's requests are sampled before step 1's update publishes version 1.
    assert metrics[1].data["staleness"] > 0, "step 2's rollouts ran while step 1 updated"
    trained = {t.request_id: t.oldest_version for t in tiers.trajectories(job_id)}
    sent = {r.msg_id: r.policy_version for r in tiers.requests(job_id)}
    assert all(trained[rid] >= version for rid, version in sent.items()), "sampled by the policy sent or newer"

    [first, *_] = of_kind(found, "checkpoint")
    position = json.loads((Path(str(first.data["path"])) / "progress.json").read_text())["prompts"]
    resumed = PromptStream(data.train, seed=7)
    resumed.load_state_dict(position)
    assert [e.uid for e in resumed.next_batch(2)] == batches[1], "step 2 was in flight: a resume draws it again"


def test_a_time_limit_ends_training_early_with_the_final_eval_and_checkpoint(
    learner_env: Settings, tiers: Tiers, programmed: Path, tmp_path: Path
) -> None:
    spec = job_spec(programmed, "grpo", total_steps=5, eval_questions=2)
    # Any step ends past a one-millisecond budget, so the first is the last, whatever the machine's speed.
    spec["schedule"].update(save_interval=100, eval_interval=100, time_limit_s=0.001)
    assert run_job(spec, "timed-job", tmp_path / "out") == 0
    found = events(learner_env, "timed-job")
    assert [(e.state, e.message) for e in of_kind(found, "state")] == [
        (JobState.RUNNING, ""), (JobState.SUCCEEDED, "trained 1 of 5 steps: time limit of 0.001 s reached"),
    ]  # fmt: skip
    assert_step_metrics(tiers, "timed-job", of_kind(found, "metrics"), [1], trajectories=4)
    assert [e.step for e in of_kind(found, "eval")] == [0, 1], "the last step done is evaluated as the final one"
    [checkpoint] = of_kind(found, "checkpoint")
    assert (
        checkpoint.step == 1
        and json.loads((Path(str(checkpoint.data["path"])) / "progress.json").read_text())["step"] == 1
    )
    assert [w.version for w in announced(learner_env, "timed-job")] == [1]


def test_ppo_job_trains_with_a_critic(learner_env: Settings, tiers: Tiers, programmed: Path, tmp_path: Path) -> None:
    spec = job_spec(programmed, "ppo", total_steps=1, critic_lr=1e-3, critic_warmup_ratio=0.0, micro_batch_size=1)
    assert run_job(spec, "ppo-job", tmp_path / "out") == 0
    found = events(learner_env, "ppo-job")
    assert [e.state for e in of_kind(found, "state")] == [JobState.RUNNING, JobState.SUCCEEDED]
    [metrics] = of_kind(found, "metrics")
    assert_step_metrics(tiers, "ppo-job", [metrics], [1], trajectories=4)
    assert math.isfinite(metrics.data["value_loss"]) and metrics.data["kl"] == metrics.data["kl_in_reward"]
    assert [w.version for w in announced(learner_env, "ppo-job")] == [1]


def test_a_reference_compat_job_is_scored_by_the_reference_rules_in_training_and_eval(
    learner_env: Settings, tiers: Tiers, programmed: Path, tmp_path: Path
) -> None:
    """`reward.compat: reference` reaches the rollout tier for training and eval requests, whose trajectories
    carry the prompt's text; the reward tier scores prompt + response (our prompt holds two answer blocks, so
    the response's answer is the last: EM as ours, in training and in greedy eval)."""
    spec = job_spec(programmed, "grpo", total_steps=1, eval_questions=2)
    spec["reward"] = {"kind": "em", "compat": "reference"}
    assert run_job(spec, "compat-job", tmp_path / "out") == 0
    found = events(learner_env, "compat-job")
    assert [e.state for e in of_kind(found, "state")] == [JobState.RUNNING, JobState.SUCCEEDED]
    assert_step_metrics(tiers, "compat-job", of_kind(found, "metrics"), [1], trajectories=4)
    assert all(e.data[f"eval_em/{EVAL_DATASET}"] == 1.0 for e in of_kind(found, "eval"))
    requests = tiers.requests("compat-job")
    assert {(r.is_eval, r.reward.compat) for r in requests} == {(False, "reference"), (True, "reference")}
    assert all(t.prompt_text for t in tiers.trajectories("compat-job")), "the reference scores prompt + response"


def test_missing_trajectories_fail_the_job_with_a_clear_timeout(
    learner_env: Settings, programmed: Path, tmp_path: Path
) -> None:
    spec = job_spec(programmed, "grpo", total_steps=1)
    spec["rollout"]["request_timeout_s"] = 0.3  # no rollout tier runs: give up after 0.9 s
    started = time.monotonic()
    assert run_job(spec, "lonely-job", tmp_path / "out") == 1
    assert time.monotonic() - started < 30
    [running, failed] = of_kind(events(learner_env, "lonely-job"), "state")
    assert running.state == JobState.RUNNING and failed.state == JobState.FAILED
    assert failed.message.startswith("TimeoutError: job lonely-job: 4 trajectories still missing after 0.9s")
    assert "are the rollout and reward tiers running?" in failed.message


def test_an_evaluation_job_serves_its_model_to_the_rollout_tier_and_reports_em(
    learner_env: Settings, programmed: Path, tmp_path: Path
) -> None:
    """The rollout tier's base model is the random tiny model, which never answers "Paris": EM 1.0 comes only
    from the evaluated (programmed) model the job serves it."""
    evaluated = programmed
    spec = {
        "name": "eval-job", "kind": "eval", "model": str(evaluated), "algorithm": {"name": "grpo"},
        "data": {"eval": [{"path": "eval/nq_test.jsonl", "limit": 3, "label": "nq"},
                          {"path": "eval/hotpotqa_dev.jsonl", "limit": 2, "label": "hotpotqa"}],
                 "eval_without_search": True},
        "rollout": job_spec(evaluated, "grpo", 1)["rollout"],
    }  # fmt: skip
    with Tiers(learner_env, Path(resolve_model(MODEL))) as tiers:
        assert run_job(spec, "eval-job", tmp_path / "out") == 0
        requests, trajectories = tiers.requests("eval-job"), tiers.trajectories("eval-job")

    found = events(learner_env, "eval-job")
    [running, succeeded] = of_kind(found, "state")
    assert (running.state, succeeded.state) == (JobState.RUNNING, JobState.SUCCEEDED)
    assert succeeded.message == "EM hotpotqa 1.000, nq 1.000"
    [result] = of_kind(found, "eval")
    em = {key: value for key, value in result.data.items() if key.startswith("eval_em")}
    assert em == {
        "eval_em/nq": 1.0,
        "eval_em/hotpotqa": 1.0,
        "eval_em_no_search/nq": 1.0,
        "eval_em_no_search/hotpotqa": 1.0,
    }, "the evaluated model answered (it answers without reading)"
    progress = [(e.data["done"], e.data["total"]) for e in of_kind(found, "progress")]
    assert progress[0] == (0, 10) and progress[-1] == (10, 10), "both passes in one batch"
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert not of_kind(found, "metrics") and not of_kind(found, "checkpoint"), "nothing is trained or saved"

    [published] = announced(learner_env, "eval-job")
    assert published.version == 1, "version 0 is the engines' own base model; the evaluated one comes after it"
    served, wanted = load_file(verify(published) / "model.safetensors"), load_file(evaluated / "model.safetensors")
    assert served.keys() == wanted.keys() and all(torch.equal(served[k], wanted[k]) for k in wanted)
    assert len(requests) == 10 and all(r.is_eval and r.episode.temperature == 0 for r in requests)
    assert [r.search_enabled for r in requests] == [True, False] * 5, "the passes interleaved, question by question"
    assert {t.oldest_version for t in trajectories} == {1}, "the engines ran the evaluated model"
    searching, tokenizer = {r.msg_id: r.search_enabled for r in requests}, AutoTokenizer.from_pretrained(evaluated)
    read = {(searching[t.request_id], "capital of France" in tokenizer.decode(t.response_ids)) for t in trajectories}
    assert read == {(True, True), (False, False)}, "only the searching pass's episodes hold the retrieved passage"


def scored(request: RolloutRequest, version: int, request_id: str | None = None) -> ScoredTrajectory:
    n = 3
    trajectory = Trajectory(
        job_id=request.job_id, request_id=request_id or request.msg_id, prompt_uid=request.prompt_uid,
        prompt_ids=request.prompt_ids, response_ids=np.arange(n), loss_mask=np.ones(n, dtype=np.uint8),
        logprobs=np.zeros(n), version_spans=[VersionSpan(start=0, end=n, version=version)],
        golden_answers=["x"],
    )  # fmt: skip
    return ScoredTrajectory(trajectory=trajectory, reward=1.0)


def test_a_too_stale_trajectory_is_dropped_and_its_sample_requested_again(settings: Settings) -> None:
    async def go() -> None:
        streams = Streams(connect(settings), settings)
        collector = Collector(streams, "stale-job")
        await collector.start()
        request = RolloutRequest(job_id="stale-job", prompt_uid="s:1", prompt_ids=[1, 2, 3], policy_version=1)
        await collector.send([request])
        scored_stream = streams.job("stale-job", "scored")
        stale = scored(request, version=0)
        await streams.publish(scored_stream, stale)
        await streams.publish(scored_stream, stale)  # redelivered: dropped once, re-requested once
        gathering = asyncio.create_task(collector.gather([request], current_version=1, max_staleness=0))
        while await streams.redis.xlen(streams.rollout) < 2:
            await asyncio.sleep(0.05)
        rows = await streams.redis.xrange(streams.rollout)
        again = RolloutRequest.from_wire(rows[-1][1][DATA_FIELD])
        assert again.msg_id != request.msg_id, "a fresh id: the rollout tier commits each id once"
        assert (again.prompt_uid, again.n_samples, again.policy_version) == ("s:1", 1, 1)
        fresh = scored(request, version=1, request_id=again.msg_id)
        await streams.publish(scored_stream, fresh)
        gathered = await asyncio.wait_for(gathering, 10)
        assert [s.msg_id for s in gathered.trajectories] == [fresh.msg_id]
        assert gathered.request_of == {fresh.trajectory.msg_id: request.msg_id}, (
            "the replacement counts for the original"
        )
        assert (gathered.dropped_stale, gathered.resent) == (1, 1)
        assert (gathered.seen, gathered.duplicates) == (3, 1), "the stale one twice (once a duplicate), the fresh one"
        assert await streams.redis.xlen(streams.rollout) == 2

        # One version behind is fine when the job allows it.
        newer = RolloutRequest(job_id="stale-job", prompt_uid="s:2", prompt_ids=[1, 2, 3], policy_version=2)
        late = scored(newer, version=1)
        await streams.publish(scored_stream, late)
        gathered = await collector.gather([newer], current_version=2, max_staleness=1, timeout_s=10)
        assert [s.msg_id for s in gathered.trajectories] == [late.msg_id] and gathered.dropped_stale == 0

        with pytest.raises(TimeoutError, match=r"1 trajectories still missing after 0.5s; are the rollout"):
            await collector.gather([newer.model_copy(update={"msg_id": "lost"})], 2, 0, timeout_s=0.5)
        await streams.redis.aclose()

    asyncio.run(go())


@pytest.mark.slow
def test_the_entrypoint_trains_two_fsdp_ranks_under_ray_train(
    worker_env: dict[str, str], settings: Settings, data_dir: Path, tiers: Tiers, programmed: Path, tmp_path: Path
) -> None:
    job_file = tmp_path / "job.json"
    spec = job_spec(programmed, "grpo", total_steps=1)
    spec["resources"] = {"learner_workers": 2, "learner_cpus_per_worker": 1}
    job_file.write_text(json.dumps(spec))
    env = dict(worker_env, SEARCHR1_DATA_DIR=str(data_dir), SEARCHR1_RAY_NUM_CPUS="2",
               SEARCHR1_RAY_OBJECT_STORE_MB="200", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "trainer.train", "--job", str(job_file), "--job-id", "ray-job",
               "--output-dir", str(tmp_path / "out")]  # fmt: skip
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)  # ~60 s when idle
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    found = events(settings, "ray-job")
    assert [e.state for e in of_kind(found, "state")] == [JobState.RUNNING, JobState.SUCCEEDED]
    assert_step_metrics(tiers, "ray-job", of_kind(found, "metrics"), [1], trajectories=4)
    [published] = announced(settings, "ray-job")
    assert published.version == 1
    verify(published)
    assert folder_checksum(programmed) != published.checksum, "the update changed the policy"
    [checkpoint] = of_kind(found, "checkpoint")
    saved = Path(str(checkpoint.data["path"]))
    assert (saved / "policy" / "model.safetensors").is_file(), "rank 0 wrote the full (gathered) policy"
    weights = load_file(saved / "policy" / "model.safetensors")
    moments = torch.load(saved / "trainer_state.pt", weights_only=False)["optimizer"]["state"]
    assert set(moments) == set(weights), "the optimiser state of every parameter, by name"
    for name, tensor in weights.items():
        assert moments[name]["exp_avg"].shape == tensor.shape, f"{name}: a shard, not the gathered state"
    assert (tmp_path / "out" / "ray").is_dir(), "Ray Train's run folder sits in the job's output folder"
