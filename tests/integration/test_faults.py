"""Faults on the live embedded platform (tests/integration/fault_kit.py): one GRPO job runs, and every fault is
injected in turn (fault_kit.GAUNTLET), each once the job has trained a step since the fault before it was seen
through. Each fault must be seen through (its metric grew, and the job trained a step after it, within WINDOW_S);
the job must end SUCCEEDED with exactly the requested steps, each trained on prompts x group trajectories
(distinct by trajectory id: none trained twice), with no entry left pending in any consumer group. A failure
names the fault. `python -m bench.chaos` injects the same faults at random, one per job, for a longer soak.
"""

from __future__ import annotations

import pytest
from fault_kit import GAUNTLET, TRAJECTORIES, Gauntlet, fault_platform, run_gauntlet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gauntlet(tmp_path_factory: pytest.TempPathFactory) -> Gauntlet:
    with fault_platform(tmp_path_factory.mktemp("faults")) as live:
        return run_gauntlet(live, GAUNTLET)


# The first case's limit covers the fixture: bringing the platform up (~140 s), the job and its faults (~4 min), down.
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("fault", GAUNTLET)
def test_job_survives(gauntlet: Gauntlet, fault: str) -> None:
    window, end = gauntlet.windows[fault], gauntlet.end
    assert window.error is None, f"the {fault} fault (at step {window.step}): {window.error}\n{end.logs[-3000:]}"
    before, after = window.evidence
    assert after > before, f"the {fault} fault does not show in the metrics ({before} before, {after} after)"
    if fault == "retriever-link":
        assert min(window.link) >= 1, f"the proxy delayed and dropped {window.link} requests"
    job = end.job
    assert job["state"] == "SUCCEEDED", f"{fault}: {job}\n{end.logs[-3000:]}"
    assert job["step"] == job["total_steps"] == end.total_steps
    assert sorted(end.steps) == list(range(1, end.total_steps + 1))
    # Counted by trajectory id: a duplicate delivery (at least once) is counted by the learner and ignored.
    assert all(m["trajectories"] == m["distinct_trajectories"] == TRAJECTORIES for m in end.steps.values()), end.steps
    assert (end.lost, end.doubled) == (0, 0)
    assert not end.pending, f"entries left pending: {end.pending}"
