"""The chart's values table, read off values.yaml's helm-docs comments (`# -- what it does`, continued on the next
comment lines; `# @default -- text` for a default the literal does not show).

`python tests/chart/values_doc.py` rewrites the table in charts/searchr1/README.md; test_values_doc.py checks
that every key has a comment and that the README's table is the one this renders.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "searchr1"
START, END = "<!-- values:start -->", "<!-- values:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?:\s|$)")
_MISSING = object()


@dataclass(frozen=True)
class Value:
    path: str
    line: int
    description: str  # "" when the key has no `# --` comment
    default: str  # the @default text, or the value as JSON
    type: str
    leaf: bool  # no keys below it in values.yaml


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def _lookup(tree: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


def _comment(lines: list[str], index: int) -> tuple[str, str | None]:
    """The `# --` description and the `# @default --` text of the comment block right above line `index`."""
    block: list[str] = []
    for line in reversed(lines[:index]):
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        block.insert(0, stripped[1:].strip())
    default = next((text.split("--", 1)[1].strip() for text in block if text.startswith("@default --")), None)
    start = next((i for i, text in enumerate(block) if text.startswith("-- ")), None)
    if start is None:
        return "", default
    text = [block[start][3:]] + [t for t in block[start + 1 :] if not t.startswith("@default --")]
    return " ".join(" ".join(text).split()), default


def read_values(path: Path = CHART / "values.yaml") -> list[Value]:
    """Every key of values.yaml written on a line of its own, in file order (keys inside list items excluded)."""
    lines = path.read_text().splitlines()
    tree = yaml.safe_load("\n".join(lines))
    stack: list[tuple[int, str]] = []
    found: list[tuple[list[str], int, int]] = []
    for index, line in enumerate(lines):
        match = _KEY.match(line)
        if match is None:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        keys = [key for _, key in stack] + [match["key"]]
        stack.append((indent, match["key"]))
        if _lookup(tree, keys) is not _MISSING:
            found.append((keys, index, indent))
    values = []
    for position, (keys, index, indent) in enumerate(found):
        following = found[position + 1] if position + 1 < len(found) else None
        leaf = following is None or following[2] <= indent
        value = _lookup(tree, keys)
        description, default = _comment(lines, index)
        shown = default or json.dumps(value, separators=(",", ":"))
        values.append(Value(".".join(keys), index + 1, description, shown, _type(value), leaf))
    return values


def table(values: list[Value]) -> str:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for value in values:
        if value.leaf:
            cells = (value.path, value.type, f"`{value.default}`", value.description)
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def readme_table(readme: str) -> str:
    """The text between the README's values markers."""
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def main() -> int:
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    head, rest = readme.split(START, 1)
    readme_path.write_text(f"{head}{START}\n{table(read_values())}\n{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
