"""A tier of the embedded platform killed with SIGKILL mid-work is started again by its keepalive; the entries
it held are reclaimed by its successor: every message handled, none twice, nothing pending."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import psutil
from support import wait_until
from test_streams import ECHO_WORKER, events, output_ids, publish

from searchr1.embedded import EmbeddedPlatform, ServiceSpec
from services.config import Settings
from services.streams import Streams, connect

MESSAGES = 16


def pending(settings: Settings) -> int:
    async def go() -> int:
        streams = Streams(connect(settings), settings)
        stats = await streams.stats(f"{settings.key_prefix}:in", "echo")
        await streams.aclose()
        return stats.pending

    return asyncio.run(go())


def test_a_killed_tier_is_restarted_and_loses_or_doubles_nothing(
    settings: Settings, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**worker_env, "ECHO_SLEEP_S": "0.5", "ECHO_CONCURRENCY": "1"}
    platform = EmbeddedPlatform(tmp_path / "run")
    (service,) = platform.up([ServiceSpec("echo", [sys.executable, str(ECHO_WORKER)], env=env, grace_s=1.0)], False)
    try:
        publish(settings, events(MESSAGES))
        started = time.monotonic()
        (first,) = psutil.Process(service.pid).children()
        # past the keepalive's first-start window, and mid-work: the entry it handles now stays pending
        wait_until(lambda: time.monotonic() - started > 5.5, 10, "the worker's first seconds")
        assert 0 < len(output_ids(settings)) < MESSAGES
        os.kill(first.pid, signal.SIGKILL)
        wait_until(lambda: platform.restarts() == {"echo": 1}, 10, "the keepalive restarts the worker")
        wait_until(lambda: len(output_ids(settings)) >= MESSAGES and pending(settings) == 0, 30, "all handled")
        (second,) = psutil.Process(service.pid).children()
        assert second.pid != first.pid
        handled = [message for message, _ in output_ids(settings)]
        assert len(handled) == len(set(handled)) == MESSAGES, "every message handled, none twice"
        assert {consumer for _, consumer in output_ids(settings)} == {f"echo-{first.pid}", f"echo-{second.pid}"}
    finally:
        assert platform.down() == ["echo"]
    assert "restart 1 in 1 s" in (tmp_path / "run" / "logs" / "echo.log").read_text()
