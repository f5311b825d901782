"""The learner's side of the bus: send rollout requests, gather the scored trajectories they produce.

Trajectories older than `max_staleness` policy versions are dropped (0 = the reference's on-policy behaviour)
and replaced at once by a new request (a fresh id, the current version) for as many samples; duplicates
(at-least-once delivery) are ignored by trajectory id; requests still short of samples after `retry_after_s`
without progress are sent again; after `timeout_s` the step fails with a clear error.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.contracts import RolloutRequest, ScoredTrajectory
from services.streams import Streams
from services.telemetry import counter, histogram

log = logging.getLogger(__name__)

STALENESS = histogram(
    "searchr1_policy_staleness", "Policy versions between sampling and training", ["job"], buckets=(0, 1, 2, 4, 8, 16)
)
DROPPED = counter("searchr1_learner_dropped_total", "Scored trajectories the learner dropped", ["job", "reason"])
DROP_REASONS = ("undecodable", "unrequested", "stale")

GROUP = "learner"


@dataclass
class Gathered:
    trajectories: list[ScoredTrajectory]
    resent: int = 0  # requests published again: unchanged after `retry_after_s`, or anew for stale samples
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
        # At 0 from the start: dashboards show 0 drops, not no data, and the first step's staleness is an
        # increase that rate() sees (a series born with its first observations has no earlier sample).
        for reason in DROP_REASONS:
            DROPPED.labels(job_id, reason)
        STALENESS.labels(job_id)

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
        progress: Callable[[int], Awaitable[None]] | None = None,
    ) -> Gathered:
        """Wait for `n_samples` scored trajectories of every request; returns them in arrival order.
        `progress` is awaited with the number gathered so far each time it grows."""
        started = time.monotonic()
        wanted = {request.msg_id: request for request in requests}
        aliases: dict[str, str] = {}  # id of a replacement request -> id of the request it stands in for
        counts = dict.fromkeys(wanted, 0)
        result = Gathered(trajectories=[])
        last_progress = started
        while any(counts[rid] < wanted[rid].n_samples for rid in wanted):
            now = time.monotonic()
            if now - started > timeout_s:
                missing = sum(wanted[rid].n_samples - counts[rid] for rid in wanted)
                raise TimeoutError(
                    f"job {self.job_id}: {missing} trajectories still missing after {timeout_s:g}s; "
                    "are the rollout and reward tiers running? (searchr1 streams stats)"
                )
            if now - last_progress > retry_after_s:
                await self._resend(wanted, counts, result)
                last_progress = now
            entries = await self.streams.read(self.scored_stream, GROUP, self.consumer, ScoredTrajectory, 256, 500)
            stale: Counter[str] = Counter()
            before = len(result.trajectories)
            for entry in entries:
                if self._accept(entry.message, wanted, aliases, counts, current_version, max_staleness, result, stale):
                    last_progress = time.monotonic()
            await self.streams.ack(self.scored_stream, GROUP, [entry.entry_id for entry in entries])
            if progress is not None and len(result.trajectories) > before:
                await progress(len(result.trajectories))
            if stale:
                await self._replace_stale(stale, wanted, aliases, counts, current_version, result)
        # The learner is the stream's only reader: drop what it has settled, or a long job fills Redis.
        await self.streams.trim_consumed(self.scored_stream)
        result.seconds = time.monotonic() - started
        result.per_request = counts
        return result

    def _accept(
        self,
        scored: ScoredTrajectory | None,
        wanted: dict[str, RolloutRequest],
        aliases: dict[str, str],
        counts: dict[str, int],
        current_version: int,
        max_staleness: int,
        result: Gathered,
        stale: Counter[str],
    ) -> bool:
        """Whether the trajectory counts for its request; a too stale one is counted in `stale` per request."""
        if scored is None:
            DROPPED.labels(self.job_id, "undecodable").inc()
            return False
        trajectory = scored.trajectory
        # A trajectory scored twice (reward-tier redelivery) arrives in two ScoredTrajectory messages.
        if trajectory.msg_id in self._seen:
            return False
        self._seen.add(trajectory.msg_id)
        request_id = aliases.get(trajectory.request_id, trajectory.request_id)
        if request_id not in wanted or counts[request_id] >= wanted[request_id].n_samples:
            DROPPED.labels(self.job_id, "unrequested").inc()
            return False
        staleness = current_version - trajectory.oldest_version
        if staleness > max_staleness:
            result.dropped_stale += 1
            DROPPED.labels(self.job_id, "stale").inc()
            stale[request_id] += 1
            return False
        STALENESS.labels(self.job_id).observe(staleness)
        counts[request_id] += 1
        result.trajectories.append(scored)
        return True

    async def _replace_stale(
        self,
        stale: Counter[str],
        wanted: dict[str, RolloutRequest],
        aliases: dict[str, str],
        counts: dict[str, int],
        current_version: int,
        result: Gathered,
    ) -> None:
        """Ask again, under a fresh id and the current version, for the samples that were dropped as stale.

        A fresh id because the rollout tier commits a request id at most once: sending the same id again would
        be acknowledged as done and sample nothing. Surplus samples (the original still delivering) are dropped.
        """
        again = []
        for request_id, dropped in stale.items():
            request = wanted[request_id]
            n = min(dropped, request.n_samples - counts[request_id])
            if n <= 0:
                continue
            fresh = request.model_copy(
                update={"msg_id": uuid.uuid4().hex, "n_samples": n, "policy_version": current_version,
                        "created_at": time.time()}
            )  # fmt: skip
            aliases[fresh.msg_id] = request_id
            again.append(fresh)
        if again:
            log.info("job %s: re-requesting %d stale sample(s) at version %d", self.job_id,
                     sum(r.n_samples for r in again), current_version)  # fmt: skip
            await self.streams.publish_many(self.streams.rollout, again)
            result.resent += len(again)

    async def _resend(self, wanted: dict[str, RolloutRequest], counts: dict[str, int], result: Gathered) -> None:
        """Publish the unfinished requests again, unchanged.

        Same message id on purpose: the rollout tier commits a request's trajectories at most once per id, so a
        request that is merely slow is not sampled twice, while one that was lost (never committed) runs again.
        """
        again = [request for rid, request in wanted.items() if counts[rid] < request.n_samples]
        log.warning("job %s: re-sending %d rollout requests that made no progress", self.job_id, len(again))
        await self.streams.publish_many(self.streams.rollout, again)
        result.resent += len(again)
