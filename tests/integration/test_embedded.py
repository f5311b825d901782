"""The embedded platform's process supervision with real tier processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from services.embedded import EmbeddedPlatform, PlatformError, ServiceSpec
from services.processes import group_alive
from services.redis_server import free_port


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
