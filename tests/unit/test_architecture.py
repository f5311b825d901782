"""The rules of the house on imports hold, and the contract that states them catches a break."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))
PACKAGES = ("searchr1", "services", "retriever", "rollout", "reward", "trainer")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [LINT_IMPORTS, "--config", "pyproject.toml", "--no-cache", "--no-logo"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_the_import_contracts() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        ("services/leak.py", "import rollout.agent\n", "The kernel imports no tier"),
        ("services/leak.py", "def f():\n    from searchr1 import cli\n", "The kernel imports no tier"),
        ("reward/leak.py", "from trainer import algos\n", "No tier imports another"),
        ("trainer/leak.py", "import searchr1.cli\n", "No tier imports the composition root"),
        ("rollout/leak.py", "import redis\n", "Redis is reached through Streams"),
    ],
)
def test_the_contracts_catch_a_forbidden_import(tmp_path: Path, module: str, source: str, broken: str) -> None:
    """The project's own contracts, on a small tree of the same packages with one forbidden import."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name in ("agent", "algos", "cli"):
        for package in PACKAGES:
            (tmp_path / package / f"{name}.py").write_text("")
    for allowed in ("services/streams.py", "services/api/store.py", "searchr1/redis_server.py"):
        (tmp_path / allowed).parent.mkdir(exist_ok=True)
        (tmp_path / allowed).write_text("import redis\n")
    (tmp_path / "services" / "api" / "__init__.py").write_text("")
    (tmp_path / module).write_text(source)
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{broken}" in result.stdout
    assert "1 broken" in result.stdout
