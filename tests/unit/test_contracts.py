"""Contracts: wire round trips, compact token arrays, clear errors, JobSpec validation and presets."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from services.contracts import (
    PRESETS,
    ContractError,
    EpisodeConfig,
    JobEvent,
    JobSpec,
    JobState,
    RolloutRequest,
    ScoredTrajectory,
    Trajectory,
    VersionSpan,
    WeightsPublished,
    dataset_label,
    weights_folder,
)


def make_trajectory(prompt_len: int = 4, response_len: int = 6, text: str = "") -> Trajectory:
    rng = np.random.default_rng(0)
    return Trajectory(
        job_id="job",
        request_id="req",
        prompt_uid="nq:7",
        prompt_ids=rng.integers(0, 151_000, prompt_len),
        response_ids=rng.integers(0, 151_000, response_len),
        loss_mask=rng.integers(0, 2, response_len).astype(np.uint8),
        logprobs=-rng.random(response_len),
        version_spans=[VersionSpan(start=0, end=response_len, version=2)],
        response_text=text,
    )


def test_trajectory_round_trip_keeps_exact_arrays() -> None:
    original = make_trajectory()
    decoded = Trajectory.from_wire(original.to_wire())
    np.testing.assert_array_equal(decoded.prompt_ids, original.prompt_ids)
    np.testing.assert_array_equal(decoded.response_ids, original.response_ids)
    np.testing.assert_array_equal(decoded.loss_mask, original.loss_mask)
    np.testing.assert_array_equal(decoded.logprobs, original.logprobs.astype(np.float32))
    assert decoded.msg_id == original.msg_id
    assert decoded.oldest_version == 2


def test_4096_token_trajectory_is_well_under_64_kb_and_binary() -> None:
    trajectory = make_trajectory(prompt_len=512, response_len=3584, text="w" * 4 * 3584)
    wire = trajectory.to_wire()
    assert len(wire) < 50_000, len(wire)
    payload = msgpack.unpackb(wire)
    assert isinstance(payload["response_ids"], bytes), "token ids must travel as bytes, not lists"
    assert len(payload["response_ids"]) == 4 * 3584


def test_json_mode_gives_plain_lists_for_api_responses() -> None:
    dumped = make_trajectory(response_len=3).model_dump(mode="json")
    assert isinstance(dumped["response_ids"], list) and len(dumped["response_ids"]) == 3


def test_nested_scored_trajectory_round_trips() -> None:
    scored = ScoredTrajectory(trajectory=make_trajectory(), reward=0.8, reward_kind="em_format")
    decoded = ScoredTrajectory.from_wire(scored.to_wire())
    assert decoded.reward == 0.8
    np.testing.assert_array_equal(decoded.trajectory.response_ids, scored.trajectory.response_ids)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\xc1\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "payload must be a map"),
        (msgpack.packb({"schema_version": 99}), "schema_version: got 99"),
        (msgpack.packb({"job_id": "j", "version": -1, "uri": "x"}), "WeightsPublished.version"),
        (msgpack.packb({"job_id": "j", "version": 1, "uri": "x", "surprise": 1}), "WeightsPublished.surprise"),
        (msgpack.packb({"job_id": "j", "version": 1, "uri": "x", "format": "nccl"}), "WeightsPublished.format"),
    ],
)
def test_bad_payloads_name_the_problem(payload: bytes, expected: str) -> None:
    with pytest.raises(ContractError, match=expected):
        WeightsPublished.from_wire(payload)


def test_trajectory_rejects_misaligned_arrays() -> None:
    good = make_trajectory().model_dump()
    with pytest.raises(ContractError, match=r"Trajectory\.\(root\)|loss_mask has 5 entries for 6"):
        Trajectory.from_wire(msgpack.packb({**good, "loss_mask": bytes(5)}))
    with pytest.raises(ContractError, match="byte length 7 is not a multiple of 4"):
        Trajectory.from_wire(msgpack.packb({**good, "logprobs": bytes(7)}))
    with pytest.raises(ValueError, match="loss_mask may only hold 0 and 1"):
        Trajectory(**{**good, "loss_mask": np.full(6, 2, dtype=np.uint8)})
    with pytest.raises(ValueError, match="outside the 6 response tokens"):
        Trajectory(**{**good, "version_spans": [VersionSpan(start=0, end=9, version=1)]})


def test_token_ids_reject_floats_and_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="expected integers"):
        RolloutRequest(job_id="j", prompt_uid="p", prompt_ids=np.array([1.5]))
    with pytest.raises(ValueError, match="must lie in"):
        RolloutRequest(job_id="j", prompt_uid="p", prompt_ids=np.array([2**40]))
    with pytest.raises(ValueError, match="at least one token"):
        RolloutRequest(job_id="j", prompt_uid="p", prompt_ids=[])


def test_a_rollout_request_carries_its_response_prefix_over_the_wire() -> None:
    plain = RolloutRequest.from_wire(RolloutRequest(job_id="j", prompt_uid="p", prompt_ids=[1, 2]).to_wire())
    assert plain.turn_prefix_ids.dtype == np.int32 and plain.turn_prefix_ids.size == 0
    opened = RolloutRequest(job_id="j", prompt_uid="p", prompt_ids=[1, 2], turn_prefix_ids=[7, 8, 9])
    assert RolloutRequest.from_wire(opened.to_wire()).turn_prefix_ids.tolist() == [7, 8, 9]


def test_a_job_s_requests_carry_its_rollout_section_s_episode_settings_as_one_object() -> None:
    """One shape: the rollout section is an EpisodeConfig (plus how the learner asks), flat in the spec's JSON as
    before; the request carries exactly the episode part, over the wire."""
    spec = JobSpec.from_preset("cpu-small")
    episode = spec.rollout.episode
    assert type(episode) is EpisodeConfig and set(EpisodeConfig.model_fields) < set(type(spec.rollout).model_fields)
    assert episode.model_dump() == spec.rollout.model_dump(include=set(EpisodeConfig.model_fields))
    assert (episode.max_turns, episode.max_tokens_per_turn, episode.temperature) == (2, 48, 0.5)
    request = RolloutRequest(job_id="j", prompt_uid="p", prompt_ids=[1, 2], episode=episode)
    assert RolloutRequest.from_wire(request.to_wire()).episode == episode
    reference = JobSpec.from_preset("paper-ppo").rollout.episode
    plain = RolloutRequest(job_id="j", prompt_uid="p", prompt_ids=[1]).episode
    assert plain == reference == EpisodeConfig(), "the reference's settings are the one set of defaults"
    with pytest.raises(ContractError, match="must exceed max_tokens_per_turn"):
        JobSpec.from_preset("paper-grpo", {"rollout": {"max_tokens_per_turn": 4096}})


def test_job_event_states() -> None:
    event = JobEvent(job_id="j", event="state", state=JobState.RUNNING)
    assert JobEvent.from_wire(event.to_wire()).state is JobState.RUNNING
    assert JobState.CANCELLED.terminal and not JobState.RUNNING.terminal


# --- JobSpec ------------------------------------------------------------------------------------------------


def test_preset_overrides_merge_deeply() -> None:
    spec = JobSpec.from_preset("paper-grpo", {"model": "tiny", "algorithm": {"group_size": 3}})
    assert spec.model == "tiny" and spec.algorithm.group_size == 3 and spec.algorithm.kl_coef == 0.001
    assert PRESETS["paper-grpo"]["model"] != "tiny", "presets must not be mutated by overrides"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"algorithm": {"learning_rate": 1}}, "JobSpec.algorithm.grpo.learning_rate: Extra inputs"),
        ({"algorithm": {"name": "dpo"}}, "JobSpec.algorithm: Input tag 'dpo'"),
        ({"rollout": {"temperature": -1}}, "JobSpec.rollout.temperature: Input should be greater than or equal"),
        ({"algorithm": {"micro_batch_size": 512}}, "micro_batch_size \\(512\\) cannot exceed mini_batch_size"),
        ({"algorithm": {"group_size": 1}}, "JobSpec.algorithm.grpo.group_size"),
        ({"rollout": {"max_prompt_tokens": 5000}}, "max_prompt_tokens \\(5000\\) must be below"),
        ({"name": "Bad Name"}, "JobSpec.name: String should match pattern"),
        ({"schedule": {"time_limit_s": 0}}, "JobSpec.schedule.time_limit_s: Input should be greater than 0"),
        ({"rollout": {"prompt_style": "chatty"}}, "rollout.prompt_style: Input should be 'instruct', 'few_shot'"),
        ({"data": {"train": []}}, "JobSpec.data: Value error, a training job needs at least one data.train source"),
        (
            {"kind": "eval", "data": {"eval": []}},
            "JobSpec.data: Value error, an evaluation needs at least one data.eval source",
        ),
    ],
)
def test_invalid_specs_give_the_field_path(overrides: dict, expected: str) -> None:
    with pytest.raises(ContractError, match=expected):
        JobSpec.from_preset("paper-grpo", overrides)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ContractError, match="paper-grpo"):
        JobSpec.from_preset("paper-dpo")


def test_weights_folder_reads_file_uris_as_path_as_uri_writes_them(tmp_path) -> None:
    folder = tmp_path / "job 1" / "v%2"
    assert weights_folder(folder.as_uri()) == folder  # percent-encoded by as_uri, decoded back
    assert weights_folder(str(folder)) == folder
    with pytest.raises(ValueError, match="not a file:// URI"):
        weights_folder("s3://bucket/job/v2")


def test_dataset_label_is_the_source_up_to_its_first_colon() -> None:
    assert dataset_label("hotpotqa:train:searchr1") == "hotpotqa"
    assert dataset_label("mine") == "mine"
    assert dataset_label("") == "unknown"
