"""The jobs API's settings (SEARCHR1_* env), one object per API process."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from services.config import SHARED_DATA_DIR, Settings

from .kuberay import KubeRaySettings
from .launchers import DEFAULT_ENTRYPOINT


class ApiSettings(Settings):
    api_token: SecretStr | None = Field(None, description="bearer token; unset = no auth (local use only)")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_running_jobs: int = Field(1, ge=1)
    launcher: Literal["local", "kuberay"] = "local"
    kuberay: KubeRaySettings = Field(default_factory=KubeRaySettings)
    work_dir: Path = Path("var")
    learner_entrypoint: str = DEFAULT_ENTRYPOINT
    # What one learner may have with the local launcher: jobs asking for more are refused at submission.
    learner_cpus: float | None = Field(None, gt=0, description="CPUs (default: this machine's)")
    learner_gpus: int | None = Field(None, ge=0, description="GPUs (default: this machine's NVIDIA GPUs)")
    data_dir: Path | None = Field(
        None, description="where the local launcher's learners read relative data paths (they read this setting "
        "too); default: the working directory",
    )  # fmt: skip
    scheduler_interval_s: float = Field(1.0, gt=0)
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies are answered 413")
    max_event_followers: int = Field(64, ge=1, description="event streams followed at once (each holds a Redis call)")
    job_retention_s: float | None = Field(
        None, gt=0, description="ended jobs created longer ago are deleted with their streams; None = kept forever"
    )
    shared_data_dir: Path = Field(
        SHARED_DATA_DIR, description="the data kit whose eval/ sets evaluations name, as the learners see it"
    )

    @field_validator("api_token")
    @classmethod
    def _printable_ascii(cls, token: SecretStr | None) -> SecretStr | None:
        """A bearer token travels in an HTTP header: printable ASCII, or no client could send it."""
        if token is not None and not (token.get_secret_value().isascii() and token.get_secret_value().isprintable()):
            raise ValueError("the API token must be printable ASCII (it is sent in the Authorization header)")
        return token

    @property
    def local_learners(self) -> bool:
        """Learners run on this machine and read its files, so the API can check data paths at submission."""
        return self.launcher == "local"
