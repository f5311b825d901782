"""Serve autoscaling of the rollout tier on its queue: the work arrives through the Redis stream, not HTTP, so
Serve's own policy (ongoing HTTP requests) would never see it.

Each replica reports the backlog of the rollout stream for its consumer group (`record_autoscaling_stats`, in
rollout/serve.py); `BacklogPolicy` asks for one replica per `target_backlog_per_replica` entries. Serve wraps a
custom policy with its own up/downscale delays, scaling factors and the min/max bounds
(ray.serve.autoscaling_policy._apply_autoscaling_config), so the policy only says how many replicas the backlog
needs. Serve pickles this module by value into its controller: it imports nothing of the project.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

BACKLOG_METRIC = "rollout_backlog"
"""Entries of the rollout stream its group has not finished: never delivered (lag) plus delivered, unacked."""


class BacklogPolicy:
    """A class, not a function: Serve passes `policy_kwargs` only to a class, once, when it instantiates it."""

    def __init__(self, target_backlog_per_replica: float) -> None:
        self.target_backlog_per_replica = target_backlog_per_replica

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        reports = (ctx.aggregated_metrics or {}).get(BACKLOG_METRIC)
        if not reports:  # no replica has reported yet (starting): keep what Serve aims for now
            return ctx.target_num_replicas, {}
        # Every replica reports the same stream's backlog (averaged over its own samples): the largest errs high.
        backlog = max(reports.values())
        # At least one: with no replica left, nobody would report the backlog that should bring one back.
        wanted = max(1, math.ceil(backlog / self.target_backlog_per_replica))
        return min(ctx.capacity_adjusted_max_replicas, max(ctx.capacity_adjusted_min_replicas, wanted)), {}
