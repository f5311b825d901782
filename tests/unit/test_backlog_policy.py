"""The rollout tier's Serve autoscaling on its queue backlog (rollout/autoscaling.py), on constructed contexts: the
bare policy, and the policy as Serve's controller runs it (wrapped with the configured delays and bounds)."""

from __future__ import annotations

from typing import Any

import pytest
from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from rollout.autoscaling import BACKLOG_METRIC, BacklogPolicy
from rollout.serve import autoscaling_config
from rollout.worker import RolloutSettings

DEPLOYMENT = DeploymentID(name="rollout", app_name="rollout")


def context(
    config: AutoscalingConfig,
    backlog: list[float] | None,
    current: int,
    target: int | None = None,
    state: dict[str, Any] | None = None,
    capacity_max: int | None = None,
) -> AutoscalingContext:
    """What Serve's controller hands the policy; `backlog` is each running replica's report (None: none yet)."""
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(current)]
    metrics = None if backlog is None else {BACKLOG_METRIC: dict(zip(replicas, backlog, strict=True))}
    return AutoscalingContext(
        deployment_id=DEPLOYMENT, deployment_name="rollout", app_name="rollout", current_num_replicas=current,
        target_num_replicas=current if target is None else target, running_replicas=replicas,
        total_num_requests=0.0, total_queued_requests=0.0, aggregated_metrics=metrics, raw_metrics=None,
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas if capacity_max is None else capacity_max,
        policy_state=state or {}, last_scale_up_time=None, last_scale_down_time=None, current_time=None,
        config=config,
    )  # fmt: skip


def config_for(**settings: Any) -> AutoscalingConfig:
    config = autoscaling_config(RolloutSettings(**settings))
    assert config is not None
    return config


def test_fixed_replicas_unless_max_replicas_is_set() -> None:
    assert autoscaling_config(RolloutSettings(replicas=2)) is None
    config = config_for(replicas=2, max_replicas=6, target_backlog_per_replica=10)
    assert (config.min_replicas, config.max_replicas) == (2, 6)
    # What Serve's controller instantiates from the config: our policy, with the target from the settings.
    policy = _resolve_policy_callable(config.policy)
    assert isinstance(policy, BacklogPolicy) and policy.target_backlog_per_replica == 10


def test_one_replica_per_target_backlog_within_the_bounds() -> None:
    config = config_for(replicas=1, max_replicas=4, target_backlog_per_replica=10)
    policy = BacklogPolicy(10)
    assert policy(context(config, [21.0], current=1))[0] == 3
    # Replicas report the same stream at different moments: the largest report counts.
    assert policy(context(config, [21.0, 12.0], current=2))[0] == 3
    assert policy(context(config, [10.0, 10.0], current=2))[0] == 1
    assert policy(context(config, [500.0], current=1))[0] == 4, "never above max_replicas"
    assert policy(context(config, [500.0], current=1, capacity_max=2))[0] == 2, "nor above Serve's capacity bound"
    assert policy(context(config, [0.0, 0.0], current=2))[0] == 1, "an empty queue keeps min_replicas"
    assert policy(context(config_for(replicas=2, max_replicas=4), [0.0] * 3, current=3))[0] == 2
    # No replica has reported yet (all starting): keep what Serve aims for, not min_replicas.
    assert policy(context(config, None, current=0, target=3))[0] == 3
    assert policy(context(config, [], current=0, target=3))[0] == 3


def test_serve_applies_the_delays_to_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve's controller wraps a custom policy with the configured delays: BacklogPolicy must not add its own."""
    now = [1000.0]
    monkeypatch.setattr("ray.serve.autoscaling_policy.time.time", lambda: now[0])
    config = config_for(replicas=1, max_replicas=4, target_backlog_per_replica=10)
    assert (config.upscale_delay_s, config.downscale_delay_s) == (30.0, 600.0)
    policy = _apply_autoscaling_config(_resolve_policy_callable(config.policy))
    state: dict[str, Any] = {}

    def decide(at: float, backlog: float, current: int) -> int:
        nonlocal state
        now[0] = 1000.0 + at
        replicas, state = policy(context(config, [backlog] * current, current=current, state=state))
        return replicas

    assert decide(0, 35, current=1) == 1, "a backlog holds for upscale_delay_s before a replica is added"
    assert decide(29, 35, current=1) == 1
    assert decide(30, 35, current=1) == 4
    assert decide(31, 0, current=4) == 4, "an empty queue holds for downscale_delay_s before replicas go"
    assert decide(300, 0, current=4) == 4
    assert decide(350, 40, current=4) == 4, "a backlog that needs all four again restarts the downscale delay"
    assert decide(360, 0, current=4) == 4
    assert decide(959, 0, current=4) == 4
    assert decide(960, 0, current=4) == 1
