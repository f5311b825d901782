"""The Grafana dashboards' queries, read from the chart: shared by the static chart tests and the live ones."""

from __future__ import annotations

import json
from pathlib import Path

DASHBOARDS = sorted((Path(__file__).resolve().parents[1] / "charts" / "searchr1" / "dashboards").glob("*.json"))


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel but rows."""
    board = json.loads(path.read_text())
    queries = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"{path.name}: panel {panel['title']!r} has no query"
        queries.extend((panel["title"], target["expr"]) for target in panel["targets"])
    return queries


def with_grafana_variables(expr: str, values: dict[str, str]) -> str:
    """The query as Grafana sends it: `$name` variables replaced (longest names first)."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr
