"""The demo's report: figures from the job's events, the JSON scripts read, the table and the picture."""

from __future__ import annotations

import json
import math
from pathlib import Path

from searchr1 import demo_report


def run_events() -> tuple[list[dict], list[dict]]:
    metrics = [{"step": s, "reward_mean": r, "format_valid_ratio": 0.5} for s, r in
               enumerate([0.1, 0.1, 0.2, 0.3, 0.4, 0.4, 0.5, 0.6], start=1)]  # fmt: skip
    before = {"step": 0, "eval_em/single": 0.2, "eval_em_no_search/single": 0.0, "eval_valid_action/single": 0.6}
    after = {"step": 8, "eval_em/single": 0.7, "eval_em_no_search/single": 0.02, "eval_valid_action/single": 0.95}
    return metrics, [before, after]


def test_report_has_before_after_and_the_reward_quarters(tmp_path: Path) -> None:
    metrics, evals = run_events()
    report = demo_report.build_report(metrics, evals, wall_seconds=600.04)
    assert report["steps"] == 8 and report["wall_seconds"] == 600.0
    assert math.isclose(report["reward_first_quarter"], 0.1) and math.isclose(report["reward_last_quarter"], 0.55)
    assert report["eval_sets"]["single"] == {
        "em_before": 0.2, "em_after": 0.7, "em_before_no_search": 0.0, "em_after_no_search": 0.02,
        "valid_action_rate_before": 0.6, "valid_action_rate_after": 0.95,
    }  # fmt: skip
    lines = demo_report.table(report).splitlines()
    assert lines[1].split() == ["single", "0.200", "0.700", "0.020", "0.600", "0.950"]
    written = json.loads(demo_report.write_json(report, tmp_path / "r.json").read_text())
    assert written["eval_sets"]["single"]["em_after"] == 0.7


def test_a_run_without_training_reports_no_after_figures_as_null(tmp_path: Path) -> None:
    _, evals = run_events()
    report = demo_report.build_report([], evals[:1], wall_seconds=1)
    written = json.loads(demo_report.write_json(report, tmp_path / "r.json").read_text())
    assert written["eval_sets"]["single"]["em_after"] is None and written["reward_first_quarter"] is None


def test_the_picture_is_a_png(tmp_path: Path) -> None:
    metrics, evals = run_events()
    path = demo_report.plot(metrics, evals, tmp_path / "curve.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
