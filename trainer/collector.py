"""The learner's side of the bus: send rollout requests, gather the scored trajectories they produce.

Trajectories older than `max_staleness` policy versions are dropped (0 = the reference's on-policy behaviour)
and replaced at once by a new request (a fresh id, the current version) for as many samples; duplicates
(at-least-once delivery) are ignored by trajectory id and counted; requests still short of samples after `retry_after_s`
without progress are sent again; after `timeout_s` the step fails with a clear error. Trajectories of requests sent
ahead (for a later step, while this one is gathered) are kept for that step's gather.
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
DROP_REASONS = ("undecodable", "duplicate", "unrequested", "stale")

GROUP = "learner"


@dataclass
class Gathered:
    trajectories: list[ScoredTrajectory]
    resent: int = 0  # requests published again: unchanged after `retry_after_s`, or anew for stale samples
    dropped_stale: int = 0
    seen: int = 0  # scored trajectories read from the stream, every delivery
    duplicates: int = 0  # of them, ones whose trajectory id had been read before (redelivered, scored twice): ignored
    seconds: float = 0.0
    per_request: dict[str, int] = field(default_factory=dict)
    # trajectory id -> id of the request it counts for (a stale sample's replacement counts for the original)
    request_of: dict[str, str] = field(default_factory=dict)


@dataclass
class _Gathering:
    """The state of one `gather`: the requests it waits for, what has arrived, and the policy it trains."""

    wanted: dict[str, RolloutRequest]  # request id -> request
    current_version: int
    max_staleness: int
    result: Gathered = field(default_factory=lambda: Gathered(trajectories=[]))
    aliases: dict[str, str] = field(default_factory=dict)  # id of a replacement request -> id of the one it stands for
    counts: dict[str, int] = field(init=False)  # request id -> trajectories accepted

    def __post_init__(self) -> None:
        self.counts = dict.fromkeys(self.wanted, 0)

    def missing(self) -> int:
        return sum(self.wanted[rid].n_samples - self.counts[rid] for rid in self.wanted)

    def unfinished(self) -> list[RolloutRequest]:
        return [request for rid, request in self.wanted.items() if self.counts[rid] < request.n_samples]


class Collector:
    def __init__(self, streams: Streams, job_id: str, consumer: str = "learner-0") -> None:
        self.streams = streams
        self.job_id = job_id
        self.consumer = consumer
        self.scored_stream = streams.job(job_id, "scored")
        self._seen: set[str] = set()
        self._outstanding: set[str] = set()  # ids of requests sent and not yet gathered
        self._early: list[ScoredTrajectory] = []  # trajectories read for an outstanding request, before its gather
        # At 0 from the start: dashboards show 0 drops, not no data, and the first step's staleness is an
        # increase that rate() sees (a series born with its first observations has no earlier sample).
        for reason in DROP_REASONS:
            DROPPED.labels(job_id, reason)
        STALENESS.labels(job_id)

    async def start(self) -> None:
        await self.streams.ensure_group(self.scored_stream, GROUP, start="$")

    async def send(self, requests: list[RolloutRequest]) -> None:
        """Publish the requests; their trajectories are kept from then on, even those that arrive while an earlier
        step's requests are gathered (requests sent ahead, for a later step)."""
        await self.streams.publish_many(self.streams.rollout, requests)
        self._outstanding.update(request.msg_id for request in requests)

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
        gathering = _Gathering({request.msg_id: request for request in requests}, current_version, max_staleness)
        result = gathering.result
        last_progress = started
        early, self._early = self._early, []
        stale: Counter[str] = Counter()
        for scored in early:
            self._place(scored, gathering, stale)
        if progress is not None and result.trajectories:
            await progress(len(result.trajectories))
        if stale:
            await self._replace_stale(stale, gathering)
        while gathering.missing() > 0:
            now = time.monotonic()
            if now - started > timeout_s:
                raise TimeoutError(
                    f"job {self.job_id}: {gathering.missing()} trajectories still missing after {timeout_s:g}s; "
                    "are the rollout and reward tiers running? (searchr1 streams stats)"
                )
            if now - last_progress > retry_after_s:
                await self._resend(gathering)
                last_progress = now
            entries = await self.streams.read(self.scored_stream, GROUP, self.consumer, ScoredTrajectory, 256, 500)
            stale: Counter[str] = Counter()
            before = len(result.trajectories)
            for entry in entries:
                if self._accept(entry.message, gathering, stale):
                    last_progress = time.monotonic()
            await self.streams.ack(self.scored_stream, GROUP, [entry.entry_id for entry in entries])
            if progress is not None and len(result.trajectories) > before:
                await progress(len(result.trajectories))
            if stale:
                await self._replace_stale(stale, gathering)
        self._outstanding.difference_update(gathering.wanted)
        # The learner is the stream's only reader: drop what it has settled, or a long job fills Redis.
        await self.streams.trim_consumed(self.scored_stream)
        result.seconds = time.monotonic() - started
        result.per_request = gathering.counts
        return result

    def _accept(self, scored: ScoredTrajectory | None, gathering: _Gathering, stale: Counter[str]) -> bool:
        """Whether the trajectory counts for its request; a too stale one is counted in `stale` per request."""
        if scored is None:
            DROPPED.labels(self.job_id, "undecodable").inc()
            return False
        trajectory = scored.trajectory
        gathering.result.seen += 1
        # A trajectory scored twice (reward-tier redelivery) arrives in two ScoredTrajectory messages.
        if trajectory.msg_id in self._seen:
            gathering.result.duplicates += 1
            DROPPED.labels(self.job_id, "duplicate").inc()
            return False
        self._seen.add(trajectory.msg_id)
        return self._place(scored, gathering, stale)

    def _place(self, scored: ScoredTrajectory, gathering: _Gathering, stale: Counter[str]) -> bool:
        """Count a first-seen trajectory for its request, keep it for a later gather, or drop it."""
        wanted, counts, trajectory = gathering.wanted, gathering.counts, scored.trajectory
        request_id = gathering.aliases.get(trajectory.request_id, trajectory.request_id)
        if request_id not in wanted and request_id in self._outstanding:
            self._early.append(scored)
            return False
        if request_id not in wanted or counts[request_id] >= wanted[request_id].n_samples:
            DROPPED.labels(self.job_id, "unrequested").inc()
            return False
        staleness = gathering.current_version - trajectory.oldest_version
        if staleness > gathering.max_staleness:
            gathering.result.dropped_stale += 1
            DROPPED.labels(self.job_id, "stale").inc()
            stale[request_id] += 1
            return False
        STALENESS.labels(self.job_id).observe(staleness)
        counts[request_id] += 1
        gathering.result.trajectories.append(scored)
        gathering.result.request_of[trajectory.msg_id] = request_id
        return True

    async def _replace_stale(self, stale: Counter[str], gathering: _Gathering) -> None:
        """Ask again, under a fresh id and the current version, for the samples that were dropped as stale.

        A fresh id because the rollout tier commits a request id at most once: sending the same id again would
        be acknowledged as done and sample nothing. Surplus samples (the original still delivering) are dropped.
        """
        again = []
        current_version = gathering.current_version
        for request_id, dropped in stale.items():
            request = gathering.wanted[request_id]
            n = min(dropped, request.n_samples - gathering.counts[request_id])
            if n <= 0:
                continue
            fresh = request.model_copy(
                update={"msg_id": uuid.uuid4().hex, "n_samples": n, "policy_version": current_version,
                        "created_at": time.time()}
            )  # fmt: skip
            gathering.aliases[fresh.msg_id] = request_id
            again.append(fresh)
        if again:
            log.info("job %s: re-requesting %d stale sample(s) at version %d", self.job_id,
                     sum(r.n_samples for r in again), current_version)  # fmt: skip
            await self.streams.publish_many(self.streams.rollout, again)
            gathering.result.resent += len(again)

    async def _resend(self, gathering: _Gathering) -> None:
        """Publish the unfinished requests again, unchanged.

        Same message id on purpose: the rollout tier commits a request's trajectories at most once per id, so a
        request that is merely slow is not sampled twice, while one that was lost (never committed) runs again.
        """
        again = gathering.unfinished()
        log.warning("job %s: re-sending %d rollout requests that made no progress", self.job_id, len(again))
        await self.streams.publish_many(self.streams.rollout, again)
        gathering.result.resent += len(again)
