"""Reading announced weights safely: the checksum the learner writes and every reader verifies before loading.

Kernel code (hashlib only), so the learner that writes a version and the rollout replicas that load it share one
definition of what a version's checksum is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from services.contracts import WeightsPublished, weights_folder


class WeightsMismatch(ValueError):
    """The files of an announced version are not the ones announced (corrupted, truncated or overwritten)."""


def folder_checksum(folder: Path) -> str:
    """sha256 over the safetensors files of a folder, in name order (what a reader verifies after loading)."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {folder}")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def verify(published: WeightsPublished) -> Path:
    """The folder of a published version, after checking its checksum (WeightsMismatch where it differs)."""
    folder = weights_folder(published.uri)
    if published.checksum and folder_checksum(folder) != published.checksum:
        raise WeightsMismatch(f"weights v{published.version} at {folder} do not match their checksum")
    return folder
