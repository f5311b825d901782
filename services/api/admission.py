"""Admission: what can be known wrong with a job when it is submitted, said then rather than by its learner minutes
later (or never, for a job the platform cannot place): a model name that names nothing, a local data file that
is not there, and more learner resources than the platform has.

Files are checked only where learners read this machine's files (the local launcher); resources only where the
platform's capacity is known (the local launcher: one machine). On Kubernetes the cluster decides placement, and
the KubeRay launcher fails a learner that does not start in time instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from services.contracts import ContractError, DataConfig, JobSpec, ResourcesConfig
from services.models import name_problem

# The file types trainer/data.py reads: a source named like one is a local file, never a hub dataset.
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Capacity:
    """What one learner can be given: CPUs and GPUs on `nodes` nodes (one machine: one node)."""

    cpus: float
    gpus: int
    nodes: int = 1

    @classmethod
    def of_this_machine(cls, cpus: float | None = None, gpus: int | None = None) -> Capacity:
        """This machine's, or less where the platform reserves some (the embedded rollout tier's CPU)."""
        return cls(cpus=float(len(os.sched_getaffinity(0))) if cpus is None else cpus,
                   gpus=machine_gpus() if gpus is None else gpus)  # fmt: skip


def machine_gpus() -> int:
    """NVIDIA GPUs a learner here could use, as Ray counts them: the /dev/nvidiaN devices, or those of
    CUDA_VISIBLE_DEVICES when it is set."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([device for device in visible.split(",") if device.strip() and device.strip() != "-1"])
    return len([p for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)])


def resource_problem(resources: ResourcesConfig, capacity: Capacity) -> str | None:
    """Why the learner a job asks for does not fit the platform, naming both; None when it fits. Ray Train gives
    each of `learner_workers` workers `learner_cpus_per_worker` CPUs and, with GPUs, one GPU."""
    workers = resources.learner_workers
    cpus = workers * resources.learner_cpus_per_worker
    gpus = workers if resources.learner_gpus_per_node > 0 else 0
    if cpus <= capacity.cpus and gpus <= capacity.gpus and resources.learner_nodes <= capacity.nodes:
        return None
    return (
        f"JobSpec.resources: the learner asks for {gpus:g} GPU(s) and {cpus:g} CPU(s) on {resources.learner_nodes} "
        f"node(s) ({workers} Ray Train worker(s) of {resources.learner_cpus_per_worker:g} CPU"
        f"{' and 1 GPU' if gpus else ''} each); this platform has {capacity.gpus} GPU(s) and {capacity.cpus:g} "
        f"CPU(s) for learners on {capacity.nodes} node(s). Ask for less (resources.learner_workers, "
        "resources.learner_cpus_per_worker, resources.learner_gpus_per_node=0), or start from the cpu-small preset"
    )


def data_problems(data: DataConfig, base_dir: Path) -> list[str]:
    """The local data files a job names that do not exist (relative paths are read from `base_dir`, as its
    learner reads them); hub datasets are left to the learner."""
    problems = []
    for kind, sources in (("train", data.train), ("eval", data.eval)):
        for index, source in enumerate(sources):
            text = source.path
            local = text.startswith(("/", "~", "./", "../")) or Path(text).suffix.lower() in DATA_FILE_SUFFIXES
            if source.format == "hf" or not local:
                continue
            path = Path(text).expanduser()
            path = path if path.is_absolute() else base_dir / path
            if not path.exists():
                problems.append(f"JobSpec.data.{kind}.{index}.path: no such file {path}")
    return problems


def admit(spec: JobSpec, capacity: Capacity | None, local_files: bool, data_dir: Path | None) -> None:
    """Raise ContractError with every problem found: the model name, local data files (`local_files`: learners
    read this machine's files, relative data paths from `data_dir`, else the working directory) and, with a known
    `capacity`, the learner's resources."""
    problems = []
    model = name_problem(spec.model, local_paths=local_files)
    if model is not None:
        problems.append(f"JobSpec.model: {model}")
    if local_files:
        problems += data_problems(spec.data, data_dir or Path.cwd())
    if capacity is not None:
        problems += [p for p in [resource_problem(spec.resources, capacity)] if p]
    if problems:
        raise ContractError("; ".join(problems))
