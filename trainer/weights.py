"""Policy weights on shared storage: one safetensors HF folder per version, written atomically, with a checksum.

The learner writes version v to `<root>/<job>/v<v>` (a temporary folder renamed into place, so a reader never
sees half a version), then announces it with `WeightsPublished`; rollout engines load the folder. Only the
newest `keep` versions stay on disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from services.contracts import WeightFormat, WeightsPublished
from services.weight_files import folder_checksum

VERSION_PREFIX = "v"


def version_dir(root: Path, job_id: str, version: int) -> Path:
    return root / job_id / f"{VERSION_PREFIX}{version}"


def save_version(
    model: Any, tokenizer: Any, root: Path, job_id: str, version: int, step: int, keep: int = 2,
    state_dict: dict[str, Any] | None = None,
) -> WeightsPublished:  # fmt: skip
    """Write `model` (a transformers PreTrainedModel; its weights, or `state_dict`, the full state of a sharded
    one) as version `version`; returns the announcement."""
    final = version_dir(root, job_id, version)
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    checksum = folder_checksum(staging)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    prune_versions(root / job_id, keep)
    return WeightsPublished(
        job_id=job_id, version=version, uri=final.resolve().as_uri(), format=WeightFormat.SAFETENSORS,
        checksum=checksum, step=step,
    )  # fmt: skip


def prune_versions(job_root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete versions; returns what was removed."""
    versions = sorted(
        (p for p in job_root.glob(f"{VERSION_PREFIX}*") if p.is_dir() and p.name[len(VERSION_PREFIX) :].isdigit()),
        key=lambda p: int(p.name[len(VERSION_PREFIX) :]),
    )
    removed = versions[: max(len(versions) - keep, 0)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
