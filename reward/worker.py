"""The reward tier: score trajectories from the reward work queue and send them to their job's learner.

Run as `python -m reward.worker`; scale by running more processes (they share one consumer group).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pydantic import Field

from reward.reference import reference_answer, reference_format_valid, reference_retrieval_hit, reference_score
from reward.scoring import check_format, extract_answer, retrieval_hit, score
from services.config import Settings
from services.contracts import ScoredTrajectory, Trajectory, dataset_label
from services.streams import Output, Streams, connect
from services.telemetry import configure_logging, counter, histogram
from services.worker import HandleBatch, PermanentError, StreamWorker, run_worker

log = logging.getLogger(__name__)

SCORED = counter("searchr1_reward_scored_total", "Trajectories scored", ["job", "source"])
SCORE = histogram(
    "searchr1_reward_score",
    "Reward given to a trajectory",
    ["job", "source"],
    buckets=(0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 0.9, 1.0),
)
BATCH_SECONDS = histogram(
    "searchr1_reward_batch_seconds",
    "Time to score one batch of trajectories",
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
)


class RewardSettings(Settings):
    group: str = "reward"
    concurrency: int = Field(512, ge=1, description="trajectories in flight per process")
    batch_size: int = Field(256, ge=1, description="trajectories read and scored together")


def score_trajectory(trajectory: Trajectory) -> ScoredTrajectory:
    """The outcome reward of one finished episode, as its job's reward settings ask."""
    if not trajectory.golden_answers:
        raise PermanentError(f"trajectory {trajectory.msg_id} of job {trajectory.job_id} has no golden answers")
    config = trajectory.reward
    if config.compat == "reference":
        return score_as_reference(trajectory)
    text = trajectory.response_text
    reward = score(text, trajectory.golden_answers, config.kind, config.format_scores)
    return ScoredTrajectory(
        trajectory=trajectory,
        reward=reward,
        reward_kind=config.kind,
        extracted_answer=extract_answer(text),
        format_valid=check_format(text).valid,
        retrieval_hit=retrieval_hit(text, trajectory.golden_answers),
    )


def score_as_reference(trajectory: Trajectory) -> ScoredTrajectory:
    """The reference's reward of prompt + response (`reward.reference`), with its view of answer and format."""
    if not trajectory.prompt_text:
        raise PermanentError(f"trajectory {trajectory.msg_id}: compat 'reference' needs its prompt_text")
    config, golds = trajectory.reward, trajectory.golden_answers
    solution = trajectory.prompt_text + trajectory.response_text
    scores = config.format_scores
    kind = "em_format" if config.kind == "em_format" else "em"  # the contract allows no other kind here
    reward = reference_score(solution, golds, kind, scores.wrong_valid, scores.wrong_invalid, scores.retrieval_bonus)
    return ScoredTrajectory(
        trajectory=trajectory,
        reward=reward,
        reward_kind=config.kind,
        extracted_answer=reference_answer(solution),
        format_valid=reference_format_valid(solution),
        retrieval_hit=reference_retrieval_hit(solution, golds),
    )


def make_batch_handler(streams: Streams) -> HandleBatch[Trajectory]:
    async def handle_batch(trajectories: list[Trajectory]) -> Sequence[Sequence[Output] | BaseException]:
        results: list[Sequence[Output] | BaseException] = []
        with BATCH_SECONDS.time():
            for trajectory in trajectories:
                try:
                    scored = score_trajectory(trajectory)
                except Exception as exc:  # one bad trajectory must not hold up the batch
                    results.append(exc)
                    continue
                source = dataset_label(trajectory.data_source)
                SCORED.labels(trajectory.job_id, source).inc()
                SCORE.labels(trajectory.job_id, source).observe(scored.reward)
                results.append([Output(streams.job(trajectory.job_id, "scored"), scored)])
        return results

    return handle_batch


def build_worker(streams: Streams, settings: RewardSettings) -> StreamWorker[Trajectory]:
    return StreamWorker(
        streams,
        stream=streams.reward,
        group=settings.group,
        message_type=Trajectory,
        handle_batch=make_batch_handler(streams),
        concurrency=settings.concurrency,
        read_count=settings.batch_size,
    )


async def serve(settings: RewardSettings) -> None:
    streams = Streams(connect(settings), settings)
    try:
        worker = build_worker(streams, settings)
        log.info("reward worker %s consuming %s in group %s", worker.consumer, streams.reward, settings.group)
        await run_worker(worker, settings)
    finally:
        await streams.aclose()


def main() -> None:
    settings = RewardSettings.load()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
