"""The searchr1 command against a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import TOKEN

from searchr1.cli import main
from services.config import Settings
from services.contracts import JobEvent
from services.models import TINY_QWEN2
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


def test_jobs_commands_drive_the_api(api, monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setenv("SEARCHR1_API_URL", api.url)
    monkeypatch.setenv("SEARCHR1_API_TOKEN", TOKEN)
    argv = ["jobs", "submit", "--preset", "paper-grpo", "--set", "name=cli-job", "--set", "schedule.total_steps=2"]
    assert main([*argv, "--set", f"model={TINY_QWEN2}"]) == 0
    job_id = capsys.readouterr().out.split()[0]
    assert job_id.startswith("cli-job-")
    assert main(["jobs", "logs", job_id, "--follow"]) == 0
    log = capsys.readouterr().out.splitlines()
    states = [line for line in log if line.startswith("[state]")]
    # Each state once: the scheduler applies the learner's RUNNING and SUCCEEDED without announcing them again.
    assert [line.split()[1] for line in states] == ["QUEUED", "STARTING", "RUNNING", "SUCCEEDED"], log
    assert any(line.startswith("[metrics] step 2 ") for line in log), log
    assert main(["jobs", "get", job_id]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["model"] == TINY_QWEN2

    spec_file = tmp_path / "job.yaml"
    (tmp_path / "train.jsonl").write_text('{"id": "1", "question": "q?", "golden_answers": ["a"], "source": "t"}\n')
    spec_file.write_text(f"name: from-file\nmodel: {TINY_QWEN2}\nalgorithm: {{name: ppo}}\n"
                         f"data: {{train: [{{path: {tmp_path / 'train.jsonl'}}}]}}\n")  # fmt: skip
    assert main(["jobs", "submit", str(spec_file), "--set", "schedule.total_steps=1"]) == 0
    assert main(["train", "--model", "Qwen/Qwen2.5-7B", "--algo", "grpo", "--set", "schedule.total_steps=1"]) == 0
    assert main(["jobs", "list"]) == 0
    listed = capsys.readouterr().out
    assert "from-file-" in listed and "reference-v02-grpo-" in listed, "paper-grpo names the v0.2 scripts it reproduces"

    assert main(["jobs", "submit", "--preset", "paper-ppo", "--set", "algorithm.clip_eps=7"]) == 1
    assert "JobSpec.algorithm.ppo.clip_eps" in capsys.readouterr().err
    assert main(["jobs", "submit", "--preset", "paper-ppo", "--set", "novalue"]) == 2
    assert "expects KEY.PATH=VALUE" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_command_quietly(api, tmp_path: Path) -> None:
    """`searchr1 jobs list | head -1`: the pipe's reader is gone before the list is written."""
    env = {**os.environ, "SEARCHR1_API_URL": api.url, "SEARCHR1_API_TOKEN": TOKEN}
    script = str(Path(sys.executable).with_name("searchr1"))
    subprocess.run([script, "jobs", "submit", "--preset", "paper-grpo", "--set", f"model={TINY_QWEN2}"], env=env,
                   capture_output=True, timeout=60, check=True)  # fmt: skip
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        listing = subprocess.run([script, "jobs", "list"], env=env, stdout=write_end, stderr=subprocess.PIPE,
                                 text=True, timeout=60)  # fmt: skip
    finally:
        os.close(write_end)
    assert listing.stderr == ""
    assert listing.returncode == 128 + signal.SIGPIPE


def test_unreachable_api_is_a_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SEARCHR1_API_URL", "http://127.0.0.1:9")
    assert main(["jobs", "list"]) == 1
    assert "cannot reach the searchr1 API at http://127.0.0.1:9" in capsys.readouterr().err


def test_eval_command_follows_an_evaluation_and_prints_em(api, monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setenv("SEARCHR1_API_URL", api.url)
    monkeypatch.setenv("SEARCHR1_API_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    rows = [{"id": str(i), "question": f"q{i}?", "golden_answers": ["a"], "source": "mine:test"} for i in range(2)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["eval", "--model", TINY_QWEN2, "--dataset", "nq", "--dataset", "hotpotqa", "--dataset", "mine.jsonl"]
    assert main([*argv, "--limit", "4"]) == 0
    out, err = capsys.readouterr()
    # The stand-in learner reports EM = 1 / (questions read): the limit for the kit's sets, 2 for the file.
    assert out.splitlines()[1:] == [f"{'nq':20}  0.250", f"{'hotpotqa':20}  0.250", f"{'mine':20}  0.500"]
    assert "10/10" in err and "SUCCEEDED" in err, err

    assert main(["jobs", "submit", "--preset", "paper-grpo", "--set", f"model={TINY_QWEN2}", "--set", "name=trained",
                 "--set", "schedule.total_steps=1"]) == 0  # fmt: skip
    job_id = capsys.readouterr().out.split()[0]
    api.wait_state(job_id, "SUCCEEDED")
    assert main(["eval", "--job", job_id, "--step", "1", "--dataset", "bamboogle", "--limit", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"{'bamboogle':20}  0.200"]
    assert main(["eval", "--job", job_id, "--step", "9", "--dataset", "nq"]) == 1
    assert f"job {job_id} has no checkpoint at step 9; it has 1" in capsys.readouterr().err
    assert main(["eval", "--model", TINY_QWEN2, "--step", "1", "--dataset", "nq"]) == 2
    assert "--step picks a checkpoint of --job" in capsys.readouterr().err
    assert main(["eval", "--model", TINY_QWEN2, "--dataset", "squad"]) == 2
    assert "--dataset 'squad' is neither a data set (nq, triviaqa" in capsys.readouterr().err

    api.env["FAKE_LEARNER_EXIT"] = "3"
    api.restart()
    assert main(["eval", "--model", TINY_QWEN2, "--dataset", "nq", "--limit", "1"]) == 1
    assert "FAILED: learner exited with code 3" in capsys.readouterr().err
