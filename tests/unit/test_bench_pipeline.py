"""bench.pipeline's pure parts: the job it times, the CPU meter's window, the ratios, which tier a process is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from bench.pipeline import CpuMeter, job_for, ratios, tier_of
from searchr1.demo import fictional
from services.contracts import JobSpec


def test_the_timed_job_is_the_demos_with_the_staleness_asked_and_no_evaluation(tmp_path: Path) -> None:
    data = fictional(tmp_path, seed=3, single_hop=4, two_hop=2)
    spec = JobSpec.model_validate(job_for(data, minutes=2, staleness=2))
    assert spec.algorithm.max_staleness == 2
    assert spec.data.eval == [] and not spec.schedule.eval_before_train
    assert spec.schedule.time_limit_s == 120
    assert spec.data.train[0].path == str(data.train)


class Readings:
    """What the meter reads of a process (`pid`, `cpu_times`, `create_time`), set by the test."""

    def __init__(self, pid: int, born: float) -> None:
        self.pid, self.born, self.used = pid, born, 0.0

    def cpu_times(self) -> SimpleNamespace:
        return SimpleNamespace(user=self.used * 0.75, system=self.used * 0.25)

    def create_time(self) -> float:
        return self.born


def test_a_process_born_in_the_window_counts_from_zero_and_an_older_one_from_its_first_reading() -> None:
    meter = CpuMeter(started=1000.0)
    old, new, gone = Readings(1, born=10.0), Readings(2, born=1001.0), Readings(3, born=1002.0)
    old.used, new.used, gone.used = 50.0, 0.5, 0.25
    for process, tier in ((old, "rollout"), (new, "learner"), (gone, "learner")):
        meter.sample(process, tier)  # type: ignore[arg-type]
    old.used, new.used = 53.0, 2.5
    meter.sample(old, "rollout")  # type: ignore[arg-type]
    meter.sample(new, "learner")  # type: ignore[arg-type]  # `gone` ended: its last reading stays
    assert meter.seconds() == pytest.approx({"rollout": 3.0, "learner": 2.5 + 0.25})


def test_ratios_are_over_the_synchronous_run() -> None:
    runs = {0: {"steps_per_hour": 40.0}, 1: {"steps_per_hour": 64.0}, 2: {"steps_per_hour": 70.0}}
    assert ratios(runs) == pytest.approx({1: 1.6, 2: 1.75})


def test_only_the_learners_processes_are_the_learners() -> None:
    assert tier_of(psutil.Process()) == "rollout"
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "trainer.train"])
    try:
        assert tier_of(psutil.Process(worker.pid)) == "learner"
    finally:
        worker.kill()
