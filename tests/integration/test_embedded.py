"""The embedded platform's process supervision with real tier processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from searchr1.embedded import EmbeddedPlatform, PlatformConfig, PlatformError, ServiceSpec, platform_specs
from searchr1.redis_server import free_port
from services.processes import group_alive


def test_up_health_checks_and_down_stops_only_what_it_started(worker_env, tmp_path: Path) -> None:
    reward_port, api_port = free_port(), free_port()
    specs = [
        ServiceSpec(
            "reward",
            [sys.executable, "-m", "reward.worker"],
            f"http://127.0.0.1:{reward_port}/readyz",
            env={**worker_env, "SEARCHR1_METRICS_PORT": str(reward_port)},
        ),
        ServiceSpec(
            "api",
            [sys.executable, "-m", "services.api.app"],
            f"http://127.0.0.1:{api_port}/readyz",
            env={**worker_env, "SEARCHR1_PORT": str(api_port), "SEARCHR1_WORK_DIR": str(tmp_path)},
        ),
    ]
    platform = EmbeddedPlatform(tmp_path / "run")
    started = platform.up(specs, progress=False)
    try:
        assert [s.name for s in platform.running()] == ["reward", "api"]
        with pytest.raises(PlatformError, match="already running"):
            platform.up(specs, progress=False)
        bystander = os.getpid()
    finally:
        stopped = platform.down()
    assert stopped == ["reward", "api"]
    assert not any(group_alive(s.pid) for s in started)
    assert group_alive(os.getpgid(bystander)) and platform.running() == []
    assert (tmp_path / "run" / "logs" / "api.log").read_text()


def test_a_service_that_dies_at_start_is_reported_and_the_rest_stopped(worker_env, tmp_path: Path) -> None:
    reward_port = free_port()
    specs = [
        ServiceSpec(
            "reward",
            [sys.executable, "-m", "reward.worker"],
            f"http://127.0.0.1:{reward_port}/readyz",
            env={**worker_env, "SEARCHR1_METRICS_PORT": str(reward_port)},
        ),
        ServiceSpec("broken", [sys.executable, "-c", "print('bad config: no index'); raise SystemExit(3)"], None),
    ]
    platform = EmbeddedPlatform(tmp_path / "run")
    with pytest.raises(PlatformError, match=r"(?s)broken exited during start-up.*bad config: no index"):
        platform.up(specs, progress=False)
    assert platform.running() == []


# A learner of the embedded platform as far as Ray goes: it joins the platform's Ray (RAY_ADDRESS) with the
# environment the API hands its learners, runs a task (so a worker process starts), and reports its node IP and
# the remote ends of its own TCP connections.
_RAY_CLIENT = """
import json, psutil, ray
ray.init()
assert ray.get(ray.remote(lambda: 1).remote()) == 1
peers = sorted({c.raddr.ip for c in psutil.Process().net_connections(kind="inet") if c.raddr})
print(json.dumps({"node_ip": ray.util.get_node_ip_address(), "peers": peers}))
"""
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def listening(process_group: int) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket listening in a process group."""
    found = set()
    for process in psutil.process_iter(["name"]):
        try:
            if os.getpgid(process.pid) != process_group:
                continue
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found.add((connection.laddr.ip, connection.laddr.port, process.info["name"]))
        except (psutil.Error, ProcessLookupError):
            continue  # a process that ended meanwhile
    return found


def test_ray_of_the_embedded_platform_listens_and_is_reached_on_loopback_only(tmp_path: Path) -> None:
    config = PlatformConfig(tmp_path / "run", tmp_path / "index", ray_port=free_port())
    specs = {spec.name: spec for spec in platform_specs(config, "redis://127.0.0.1:6379/0")}
    platform = EmbeddedPlatform(config.run_dir)
    [ray_head] = platform.up([specs["ray"]], progress=False)
    try:
        client = subprocess.run([sys.executable, "-c", _RAY_CLIENT], env={**os.environ, **specs["api"].env},
                                capture_output=True, text=True, timeout=180)  # fmt: skip
        assert client.returncode == 0, client.stderr[-3000:]
        joined = json.loads(client.stdout.splitlines()[-1])
        sockets = listening(ray_head.pid)
    finally:
        platform.down()
    names = {name for _, _, name in sockets}
    assert {"gcs_server", "raylet"} <= names and any(port == config.ray_port for _, port, _ in sockets), sockets
    assert {(ip, port, name) for ip, port, name in sockets if ip not in LOOPBACK} == set(), "listens beyond loopback"
    assert joined["node_ip"] == "127.0.0.1" and set(joined["peers"]) <= LOOPBACK, joined
