"""Admission at submission: the platform's capacity, what a job's learner asks for, local data files."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchr1.embedded import PlatformConfig, platform_specs
from services.api.admission import Capacity, admit, data_problems, machine_gpus, resource_problem
from services.api.app import ApiSettings, build_launcher
from services.contracts import ContractError, JobSpec


def test_the_embedded_platform_tells_its_api_what_learners_can_have(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = PlatformConfig(tmp_path, tmp_path / "index")
    specs = {spec.name: spec for spec in platform_specs(config, "redis://127.0.0.1:6379/0")}
    assert specs["rollout"].env["SEARCHR1_REPLICA_CPUS"] == str(config.rollout_cpus)
    for key, value in specs["api"].env.items():
        monkeypatch.setenv(key, value)
    capacity = build_launcher(ApiSettings.load()).capacity
    assert capacity is not None and capacity.cpus == config.ray_cpus - config.rollout_cpus == 1
    assert resource_problem(JobSpec.from_preset("cpu-small").resources, capacity) is None
    assert resource_problem(JobSpec.from_preset("paper-grpo").resources, capacity) is not None


def test_a_learner_that_does_not_fit_names_what_it_asked_for_and_what_there_is() -> None:
    paper = JobSpec.from_preset("paper-ppo").resources
    problem = resource_problem(paper, Capacity(cpus=16, gpus=0))
    assert problem is not None
    assert "asks for 8 GPU(s) and 8 CPU(s) on 1 node(s) (8 Ray Train worker(s) of 1 CPU and 1 GPU each)" in problem
    assert "this platform has 0 GPU(s) and 16 CPU(s) for learners on 1 node(s)" in problem
    assert resource_problem(paper, Capacity(cpus=8, gpus=8)) is None
    two_cpus = paper.model_copy(update={"learner_gpus_per_node": 0, "learner_workers": 2})
    assert "0 GPU(s) and 2 CPU(s)" in (resource_problem(two_cpus, Capacity(cpus=1, gpus=0)) or "")
    two_nodes = paper.model_copy(update={"learner_nodes": 2})
    assert "on 2 node(s)" in (resource_problem(two_nodes, Capacity(cpus=8, gpus=8)) or "")


def test_gpus_are_counted_as_ray_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert machine_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert machine_gpus() == 0


def test_missing_local_data_files_are_named_and_hub_datasets_left_to_the_learner(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("")
    spec = JobSpec.from_preset(
        "cpu-small",
        {"data": {"train": [{"path": "train.jsonl"}, {"path": "org/dataset"}, {"path": "gone.parquet", "format": "hf"}],
                  "eval": [{"path": str(tmp_path / "gone.jsonl")}, {"path": "./gone"}]}},
    )  # fmt: skip
    assert data_problems(spec.data, tmp_path) == [
        f"JobSpec.data.eval.0.path: no such file {tmp_path / 'gone.jsonl'}",
        f"JobSpec.data.eval.1.path: no such file {tmp_path / 'gone'}",
    ]


def test_admit_reports_every_problem_at_once_and_only_what_it_can_see(tmp_path: Path) -> None:
    spec = JobSpec.from_preset("paper-grpo", {"model": "tiny-random-qwen", "data": {"train": [{"path": "x.jsonl"}]}})
    with pytest.raises(ContractError) as refused:
        admit(spec, Capacity(cpus=2, gpus=0), local_files=True, data_dir=tmp_path)
    problems = str(refused.value).split("; JobSpec.")
    assert [p.split(":")[0].removeprefix("JobSpec.") for p in problems] == ["model", "data.train.0.path", "resources"]
    assert "the closest is 'tiny-random-qwen2'" in problems[0]
    # The KubeRay launcher: learners read the cluster's volumes and the cluster places them.
    admit(spec.model_copy(update={"model": "/models/qwen"}), None, local_files=False, data_dir=None)
