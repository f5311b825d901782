"""The demo's report: one table, `demo_report.json` for scripts, and a picture of the run.

Built from the job's events: `metrics` per step and `eval` results (the first before training, the last after it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

EM, NO_SEARCH, VALID = "eval_em/", "eval_em_no_search/", "eval_valid_action/"


def quarter_means(values: list[float]) -> tuple[float, float]:
    """Means of the first and the last quarter of `values` (at least one value each; NaN when empty)."""
    if not values:
        return math.nan, math.nan
    n = max(1, len(values) // 4)
    return sum(values[:n]) / n, sum(values[-n:]) / n


def build_report(metrics: list[dict[str, Any]], evals: list[dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
    """The figures of a run: per eval set EM before/after (with and without search) and valid-action rates; the
    steps, the wall time and the reward's mean over the first and the last quarter of steps; every step's metrics
    and every eval as the job reported them."""
    rewards = [float(m["reward_mean"]) for m in metrics]
    first_quarter, last_quarter = quarter_means(rewards)
    report: dict[str, Any] = {
        "steps": len(metrics),
        "wall_seconds": round(wall_seconds, 1),
        "reward_first_quarter": first_quarter,
        "reward_last_quarter": last_quarter,
        "eval_sets": {},
        "per_step": metrics,
        "evals": evals,
    }
    if not evals:
        return report
    before, after = evals[0], evals[-1]
    trained = len(evals) > 1
    for key in sorted(k for k in before if k.startswith(EM)):
        name = key[len(EM) :]
        report["eval_sets"][name] = {
            "em_before": before[key],
            "em_after": after[key] if trained else math.nan,
            "em_before_no_search": before.get(NO_SEARCH + name, math.nan),
            "em_after_no_search": after.get(NO_SEARCH + name, math.nan) if trained else math.nan,
            "valid_action_rate_before": before.get(VALID + name, math.nan),
            "valid_action_rate_after": after.get(VALID + name, math.nan) if trained else math.nan,
        }
    return report


def table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table, one row per eval set, then the reward's quarters."""
    columns = ("EM before", "EM after", "no search", "valid before", "valid after")
    lines = [f"{'data set':24}" + "".join(f"{c:>13}" for c in columns)]
    for name, row in report["eval_sets"].items():
        values = (row["em_before"], row["em_after"], row["em_after_no_search"], row["valid_action_rate_before"],
                  row["valid_action_rate_after"])  # fmt: skip
        lines.append(f"{name:24}" + "".join(f"{v:13.3f}" for v in values))
    lines.append(
        f"{report['steps']} steps in {report['wall_seconds'] / 60:.1f} min; mean reward over the first quarter of "
        f"steps {report['reward_first_quarter']:.3f}, over the last quarter {report['reward_last_quarter']:.3f}"
    )
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> Path:
    """`report` as JSON (NaN, for a figure the run does not have, becomes null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return None if isinstance(value, float) and math.isnan(value) else value

    path.write_text(json.dumps(clean(report), indent=2) + "\n")
    return path


def moving_average(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))]  # fmt: skip


def plot(metrics: list[dict[str, Any]], evals: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Per-step reward with its moving average, the share of well-formed episodes, and the eval EM of every eval
    set at each eval step, on integer step ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(10, 4.8))
    if metrics:
        steps = [int(m["step"]) for m in metrics]
        rewards = [float(m["reward_mean"]) for m in metrics]
        window = max(1, len(rewards) // 8)
        axis.plot(steps, rewards, marker="o", markersize=3, alpha=0.35, label="mean reward per step")
        axis.plot(steps, moving_average(rewards, window), linewidth=2, label=f"reward, {window}-step moving average")
        if all("format_valid_ratio" in m for m in metrics):
            axis.plot(steps, [m["format_valid_ratio"] for m in metrics], linestyle="--", label="well-formed episodes")
    for key in sorted({k for e in evals for k in e if k.startswith((EM, NO_SEARCH))}):
        points = [(int(e["step"]), float(e[key])) for e in evals if key in e]
        style = {"marker": "s", "linestyle": ":"} if key.startswith(NO_SEARCH) else {"marker": "D"}
        label = f"eval EM {key.split('/', 1)[1]}" + (" (no search)" if key.startswith(NO_SEARCH) else "")
        axis.plot(*zip(*points, strict=True), **style, label=label)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("training step")
    axis.set_ylabel("share / mean")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
