"""Ray Serve scales on the rollout queue: a deployment whose replicas report the backlog with the rollout replica's
own `record_autoscaling_stats` (ReportsBacklog), under the AutoscalingConfig rollout/serve.py builds (BacklogPolicy),
goes from 1 to 2 replicas while the stream holds a backlog and back to 1 once it is drained. Real Ray Serve, real
Redis; the replicas hold no engine, so the test takes seconds rather than an engine's start."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import numpy as np
import pytest
from support import wait_until

from rollout.serve import ReportsBacklog, autoscaling_config
from rollout.worker import RolloutSettings
from services.config import Settings
from services.contracts import RolloutRequest
from services.streams import Streams, connect

pytestmark = pytest.mark.slow

GROUP = "rollout"


@pytest.fixture
def serve_cluster() -> Iterator[None]:
    import ray
    from ray import serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_states() -> dict[str, int]:
    from ray import serve

    deployment = serve.status().applications["probe"].deployments["probe"]
    # ReplicaState is a str Enum: its members compare (and hash) equal to their names.
    return {state: count for state, count in deployment.replica_states.items() if count}


def test_serve_scales_on_the_rollout_backlog(serve_cluster: None, settings: Settings) -> None:
    from ray import serve

    rollout_settings = RolloutSettings(
        **settings.model_dump(), group=GROUP, replicas=1, max_replicas=2, target_backlog_per_replica=4
    )
    config = autoscaling_config(rollout_settings)
    assert config is not None
    # Seconds, not the production defaults (30 s up, 600 s down, a 30 s window, reports every 10 s).
    config = config.model_copy(
        update={"upscale_delay_s": 1.0, "downscale_delay_s": 2.0, "look_back_period_s": 1.0, "metrics_interval_s": 0.5}
    )

    @serve.deployment(name="probe", ray_actor_options={"num_cpus": 0.5}, autoscaling_config=config)
    class BacklogProbe(ReportsBacklog):
        """A replica without an engine or a consumer: it only reports, so the test alone moves the backlog."""

        def __init__(self, settings_json: str) -> None:
            replica_settings = RolloutSettings.model_validate_json(settings_json)
            self.streams = Streams(connect(replica_settings), replica_settings)
            self.group = replica_settings.group

    serve.run(BacklogProbe.bind(rollout_settings.model_dump_json()), name="probe", route_prefix=None)
    assert replica_states() == {"RUNNING": 1}

    streams = Streams(connect(settings), settings)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(streams.ensure_group(streams.rollout, GROUP))
        requests = [RolloutRequest(job_id="scale", prompt_uid=f"q:{i}", prompt_ids=np.arange(1, 9)) for i in range(9)]
        loop.run_until_complete(streams.publish_many(streams.rollout, requests))
        # 9 undelivered entries, 4 per replica: 3 wanted, max_replicas 2.
        wait_until(lambda: replica_states() == {"RUNNING": 2}, 60, "a second replica for the backlog", interval_s=0.2)

        # Delivered but not acknowledged is still backlog (what the replicas are working on): no scale-down.
        entries = loop.run_until_complete(
            streams.read(streams.rollout, GROUP, "test", RolloutRequest, count=20, block_ms=None)
        )
        assert len(entries) == 9
        stats = loop.run_until_complete(streams.stats(streams.rollout, GROUP))
        assert (stats.lag, stats.pending) == (0, 9)
        loop.run_until_complete(asyncio.sleep(5))  # over twice the downscale delay plus the window
        assert replica_states() == {"RUNNING": 2}

        loop.run_until_complete(streams.ack(streams.rollout, GROUP, [e.entry_id for e in entries]))
        wait_until(lambda: replica_states() == {"RUNNING": 1}, 60, "the drained queue to drop one", interval_s=0.2)
    finally:
        loop.run_until_complete(streams.aclose())
        loop.close()
