"""The rules of the house on imports hold, and the contract that states them catches a break."""

from __future__ import annotations

import ast
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


RAW_REDIS_ALLOWED = {Path("services/streams.py"), Path("services/api/store.py"), Path("searchr1/redis_server.py")}


def raw_redis_uses(path: Path) -> list[int]:
    """Lines of `path` that reach a Redis client directly: `<anything>.redis.<call>` (e.g. `streams.redis.xadd`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "redis"
    ]


def test_streams_own_their_verbs_no_raw_redis_elsewhere() -> None:
    """Imports are the contract's; this catches the other way in: a Streams' client used by hand."""
    offenders = {
        str(path.relative_to(ROOT)): lines
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.relative_to(ROOT) not in RAW_REDIS_ALLOWED and (lines := raw_redis_uses(path))
    }
    assert offenders == {}


def test_a_raw_redis_call_is_noticed(tmp_path: Path) -> None:
    module = tmp_path / "worker.py"
    module.write_text("async def f(streams):\n    return await streams.redis.xrevrange('s', count=1)\n")
    assert raw_redis_uses(module) == [2]
