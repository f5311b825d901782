"""The learner's side of the bus: send rollout requests, gather the scored trajectories they produce.

Trajectories older than `max_staleness` policy versions are dropped (0 = the reference's on-policy behaviour),
duplicates (at-least-once delivery) are ignored by message id, and requests still short of samples after
`retry_after_s` without progress are sent again; after `timeout_s` the step fails with a clear error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from services.contracts import RolloutRequest, ScoredTrajectory
from services.streams import Streams
from services.telemetry import counter, histogram

log = logging.getLogger(__name__)

STALENESS = histogram(
    "searchr1_policy_staleness", "Policy versions between sampling and training", ["job"], buckets=(0, 1, 2, 4, 8, 16)
)
DROPPED = counter("searchr1_learner_dropped_total", "Scored trajectories the learner dropped", ["job", "reason"])

GROUP = "learner"


@dataclass
class Gathered:
    trajectories: list[ScoredTrajectory]
    resent: int = 0
    dropped_stale: int = 0
    seconds: float = 0.0
    per_request: dict[str, int] = field(default_factory=dict)


class Collector:
    def __init__(self, streams: Streams, job_id: str, consumer: str = "learner-0") -> None:
        self.streams = streams
        self.job_id = job_id
        self.consumer = consumer
        self.scored_stream = streams.job(job_id, "scored")
        self._seen: set[str] = set()

    async def start(self) -> None:
        await self.streams.ensure_group(self.scored_stream, GROUP, start="$")

    async def send(self, requests: list[RolloutRequest]) -> None:
        await self.streams.publish_many(self.streams.rollout, requests)

    async def gather(
        self,
        requests: list[RolloutRequest],
        current_version: int,
        max_staleness: int,
        retry_after_s: float = 300.0,
        timeout_s: float = 1800.0,
    ) -> Gathered:
        """Wait for `n_samples` scored trajectories of every request; returns them in arrival order."""
        started = time.monotonic()
        wanted = {request.msg_id: request for request in requests}
        counts = dict.fromkeys(wanted, 0)
        result = Gathered(trajectories=[])
        last_progress = started
        while any(counts[rid] < wanted[rid].n_samples for rid in wanted):
            now = time.monotonic()
            if now - started > timeout_s:
                missing = sum(wanted[rid].n_samples - counts[rid] for rid in wanted)
                raise TimeoutError(
                    f"job {self.job_id}: {missing} trajectories still missing after {timeout_s:.0f}s; "
                    "are the rollout and reward tiers running? (searchr1 streams stats)"
                )
            if now - last_progress > retry_after_s:
                await self._resend(wanted, counts, result)
                last_progress = now
            entries = await self.streams.read(self.scored_stream, GROUP, self.consumer, ScoredTrajectory, 256, 500)
            for entry in entries:
                if self._accept(entry.message, wanted, counts, current_version, max_staleness, result):
                    last_progress = time.monotonic()
            await self.streams.ack(self.scored_stream, GROUP, [entry.entry_id for entry in entries])
        result.seconds = time.monotonic() - started
        result.per_request = counts
        return result

    def _accept(
        self,
        scored: ScoredTrajectory | None,
        wanted: dict[str, RolloutRequest],
        counts: dict[str, int],
        current_version: int,
        max_staleness: int,
        result: Gathered,
    ) -> bool:
        if scored is None:
            DROPPED.labels(self.job_id, "undecodable").inc()
            return False
        trajectory = scored.trajectory
        if scored.msg_id in self._seen:
            return False
        self._seen.add(scored.msg_id)
        request_id = trajectory.request_id
        if request_id not in wanted or counts[request_id] >= wanted[request_id].n_samples:
            DROPPED.labels(self.job_id, "unrequested").inc()
            return False
        staleness = current_version - trajectory.oldest_version
        if staleness > max_staleness:
            result.dropped_stale += 1
            DROPPED.labels(self.job_id, "stale").inc()
            return False
        STALENESS.labels(self.job_id).observe(staleness)
        counts[request_id] += 1
        result.trajectories.append(scored)
        return True

    async def _resend(self, wanted: dict[str, RolloutRequest], counts: dict[str, int], result: Gathered) -> None:
        """Publish the unfinished requests again, unchanged.

        Same message id on purpose: the rollout tier commits a request's trajectories at most once per id, so a
        request that is merely slow is not sampled twice, while one that was lost (never committed) runs again.
        """
        again = [request for rid, request in wanted.items() if counts[rid] < request.n_samples]
        log.warning("job %s: re-sending %d rollout requests that made no progress", self.job_id, len(again))
        await self.streams.publish_many(self.streams.rollout, again)
        result.resent += len(again)
