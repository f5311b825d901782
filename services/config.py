"""Process settings: `SEARCHR1_*` environment variables over an optional YAML file over defaults.

Each tier subclasses `Settings` with its own fields; every process builds exactly one settings object.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from services.contracts import ContractError, describe_validation_error

CONFIG_FILE_ENV = "SEARCHR1_CONFIG"
# The offline data kit (train/, eval/, corpus/) beside the repository, where a checkout keeps it.
SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
_config_file: ContextVar[Path | None] = ContextVar("searchr1_config_file", default=None)


class Settings(BaseSettings):
    """What every searchr1 process needs: where Redis is, how streams behave, where metrics go."""

    model_config = SettingsConfigDict(env_prefix="SEARCHR1_", extra="forbid", env_nested_delimiter="__")

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = Field(10.0, gt=0, description="socket timeout of every Redis call")
    key_prefix: str = Field("searchr1", min_length=1, description="namespace of every Redis key and stream")
    stream_maxlen: int = Field(100_000, ge=100, description="hard cap of every stream (approximate trim)")
    reclaim_idle_ms: int = Field(60_000, ge=1, description="an entry unacked this long is taken over")
    max_deliveries: int = Field(5, ge=1, description="deliveries after which an entry is dead-lettered")
    dedupe_ttl_s: int = Field(3600, ge=1, description="how long a processed message id is remembered")
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(None, ge=0, le=65535, description="health and /metrics port; None = off")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, file_secret_settings]
        config_file = _config_file.get() or os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Self:
        """Build the settings; a bad value raises ContractError naming the setting and the env variable."""
        path = Path(config_file) if config_file is not None else None
        if path is None and os.environ.get(CONFIG_FILE_ENV):
            path = Path(os.environ[CONFIG_FILE_ENV])
        if path is not None and not path.is_file():
            raise ContractError(f"config file {path} does not exist")
        token = _config_file.set(path)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ContractError(
                describe_validation_error(exc, cls.__name__)
                + f" (set via SEARCHR1_<NAME> or the YAML file in ${CONFIG_FILE_ENV})"
            ) from None
        finally:
            _config_file.reset(token)
