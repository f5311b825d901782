"""The searchr1 command against a real Redis."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from services.cli import main
from services.config import Settings
from services.contracts import JobEvent
from services.streams import Streams, connect


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("SEARCHR1_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("SEARCHR1_KEY_PREFIX", settings.key_prefix)
    return settings


def test_console_script_is_installed() -> None:
    script = shutil.which("searchr1") or str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "searchr1")
    result = subprocess.run([script, "version"], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.startswith("searchr1 0.")


def test_dead_letters_can_be_listed_and_replayed(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    message = JobEvent(job_id="j", event="log", message="retry me")

    async def dead_letter_one() -> Streams:
        streams = Streams(connect(cli_env), cli_env)
        await streams.ensure_group(streams.reward, "reward")
        await streams.publish(streams.reward, message)
        [entry] = await streams.read(streams.reward, "reward", "c", JobEvent, block_ms=100)
        await streams.dead_letter("reward", entry, "handler exploded")
        return streams

    streams = asyncio.run(dead_letter_one())
    assert main(["streams", "dead-letters", streams.reward]) == 0
    assert "handler exploded" in capsys.readouterr().out

    assert main(["streams", "stats"]) == 0
    stats_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(streams.reward + " "))
    assert stats_line.split()[-1] == "1", stats_line  # one dead letter

    assert main(["streams", "dead-letters", streams.reward, "--replay"]) == 0

    async def read_back() -> tuple[list, int]:
        client = Streams(connect(cli_env), cli_env)
        entries = await client.read(client.reward, "reward", "c", JobEvent, block_ms=100)
        dead = await client.redis.xlen(client.dead_letter_stream(client.reward))
        await client.redis.aclose()
        return entries, dead

    entries, dead = asyncio.run(read_back())
    assert [e.message.msg_id for e in entries] == [message.msg_id]
    assert dead == 0


def test_bad_settings_exit_2_with_the_setting_named(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SEARCHR1_MAX_DELIVERIES", "0")
    assert main(["streams", "stats"]) == 2
    assert "max_deliveries" in capsys.readouterr().err
