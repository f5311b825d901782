"""The chaos soak's bookkeeping: what counts as lost, doubled and survived, and the figures it prints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fault_kit import STEPS, TRAJECTORIES, Outcome

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is run from the root (python -m), not installed
from bench.chaos import figures, main, table


def outcome(steps: dict[int, dict[str, float]], state: str = "SUCCEEDED", grew: bool = True) -> Outcome:
    return Outcome({"state": state}, steps, {}, "", evidence=(0.0, 1.0 if grew else 0.0))


def clean(duplicates: int = 0) -> dict[str, float]:
    return {"trajectories": TRAJECTORIES, "distinct_trajectories": TRAJECTORIES, "duplicate_trajectories": duplicates}


def test_an_outcome_counts_lost_and_doubled_trajectories_by_step() -> None:
    fine = outcome({step: clean(duplicates=1) for step in range(1, STEPS + 1)})
    assert (fine.lost, fine.doubled, fine.duplicates_ignored, fine.survived) == (0, 0, STEPS, True)
    short = {**fine.steps, 2: {**clean(), "trajectories": 3, "distinct_trajectories": 3}}
    short.pop(STEPS)
    assert outcome(short).lost == 1 + TRAJECTORIES and not outcome(short).survived, "a short step and a missing one"
    twice = outcome({**fine.steps, 1: {**clean(), "distinct_trajectories": TRAJECTORIES - 1}})
    assert twice.doubled == 1 and not twice.survived
    assert not outcome(fine.steps, grew=False).survived, "a fault that shows nowhere is not proven survived"
    assert not outcome(fine.steps, state="FAILED").survived


def test_figures_add_up_runs_per_fault() -> None:
    runs = [
        {"fault": "learner", "survived": True, "lost": 0, "doubled": 0, "duplicates_ignored": 2},
        {"fault": "retriever", "survived": False, "error": "timed out"},
        {"fault": "learner", "survived": False, "lost": 4, "doubled": 1, "duplicates_ignored": 0},
    ]
    report = {**figures(runs), "soaked_s": 61.0}
    assert report["faults_injected"] == 3 and report["faults_survived"] == 1
    assert (report["trajectories_lost"], report["trajectories_doubled"], report["duplicates_ignored"]) == (4, 1, 2)
    assert report["per_fault"] == {
        "learner": {"injected": 2, "survived": 1},
        "retriever": {"injected": 1, "survived": 0},
    }
    assert table(report).splitlines()[-1] == (
        "trajectories lost 4, doubled 1 (duplicate deliveries ignored by the learner: 2); 61 s of faults"
    )


def test_a_soak_needs_a_positive_length() -> None:
    with pytest.raises(SystemExit):
        main(["--minutes", "0"])
