"""Settings: defaults, then a YAML file, then SEARCHR1_* environment variables; bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.config import CONFIG_FILE_ENV, Settings
from services.contracts import ContractError


def test_environment_overrides_yaml_which_overrides_defaults(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("key_prefix: from-yaml\nmax_deliveries: 7\n")
    monkeypatch.setenv("SEARCHR1_MAX_DELIVERIES", "9")
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    settings = Settings.load(config)
    assert settings.key_prefix == "from-yaml"
    assert settings.max_deliveries == 9
    assert settings.reclaim_idle_ms == 60_000


def test_bad_values_name_the_setting(monkeypatch) -> None:
    monkeypatch.setenv("SEARCHR1_STREAM_MAXLEN", "5")
    with pytest.raises(ContractError, match=r"Settings\.stream_maxlen: Input should be greater than or equal to 100"):
        Settings.load()


def test_unknown_yaml_keys_are_errors(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("redis_ulr: redis://x\n")
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    with pytest.raises(ContractError, match="redis_ulr"):
        Settings.load(config)


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="does not exist"):
        Settings.load(tmp_path / "nope.yaml")
