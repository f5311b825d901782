"""`searchr1 up` settings: port overrides and the Prometheus scrape config written for a local run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from searchr1.cli import _platform_config, build_parser, main
from searchr1.embedded import PlatformConfig, cpu_rollout_dtype, platform_specs, write_prometheus_config


def test_ports_move_with_port_options(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "up",
            "--run-dir",
            str(tmp_path),
            "--api-port",
            "18080",
            "--port",
            "rollout=18001",
            "--port",
            "learner_metrics=19104",
        ]
    )
    config = _platform_config(args)
    assert (config.api_port, config.rollout_port, config.learner_metrics_port) == (18080, 18001, 19104)
    assert config.retriever_port == PlatformConfig(tmp_path, tmp_path).retriever_port  # untouched
    specs = {spec.name: spec for spec in platform_specs(config, "redis://127.0.0.1:6379/0")}
    assert specs["rollout"].env["SEARCHR1_HTTP_PORT"] == "18001"
    assert specs["api"].env["SEARCHR1_METRICS_PORT"] == "19104"  # inherited by the learners the API launches
    assert specs["api"].env["SEARCHR1_TORCH_THREADS"] == str(config.ray_cpus)  # their update uses every core


@pytest.mark.parametrize("bad", ["rollout", "nothing=1", "rollout=port", "rollout=70000"])
def test_a_bad_port_option_exits_2_naming_it(bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--run-dir", str(tmp_path), "--port", bad]) == 2
    err = capsys.readouterr().err
    assert repr(bad) in err and "retriever, rollout" in err
    assert not (tmp_path / "platform.json").exists()  # nothing started


def test_prometheus_config_scrapes_every_tier_keeping_the_job_label(tmp_path: Path) -> None:
    config = PlatformConfig(tmp_path, tmp_path / "index", api_port=18080, reward_metrics_port=19102)
    scraped = yaml.safe_load(write_prometheus_config(config, scrape_interval_s=2).read_text())
    assert scraped["global"]["scrape_interval"] == "2s"
    jobs = {c["job_name"]: c for c in scraped["scrape_configs"]}
    assert set(jobs) == {f"searchr1-{tier}" for tier in ("api", "retriever", "reward", "rollout", "learner")}
    assert all(c["honor_labels"] and c["metrics_path"] == "/metrics/" for c in jobs.values())
    assert jobs["searchr1-api"]["static_configs"][0]["targets"] == ["127.0.0.1:18080"]
    assert jobs["searchr1-reward"]["static_configs"][0]["targets"] == ["127.0.0.1:19102"]


def test_rollout_dtype_auto_is_bfloat16_only_where_the_cpu_computes_it(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_rollout_dtype(cpuinfo) == "bfloat16"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f\n")
    assert cpu_rollout_dtype(cpuinfo) == "float32"
    assert cpu_rollout_dtype(tmp_path / "no-such-file") == "float32"
    args = build_parser().parse_args(["up", "--run-dir", str(tmp_path), "--rollout-dtype", "float32"])
    specs = {spec.name: spec for spec in platform_specs(_platform_config(args), "redis://127.0.0.1:6379/0")}
    assert specs["rollout"].env["SEARCHR1_DTYPE"] == "float32"
    auto = _platform_config(build_parser().parse_args(["up", "--run-dir", str(tmp_path)]))
    assert auto.rollout_dtype == cpu_rollout_dtype()
