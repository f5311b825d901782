"""A stand-in learner entrypoint for control-plane tests: reports through the job's events stream like the real
learner does (RUNNING, a metrics event per step, a checkpoint, then SUCCEEDED), without training anything.

FAKE_LEARNER_STEP_S sets seconds per step; FAKE_LEARNER_EXIT makes it exit with that code instead of finishing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from services.config import Settings
from services.contracts import JobEvent, JobSpec, JobState
from services.streams import Streams, connect


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()
    spec = JobSpec.parse(json.loads(Path(args.job).read_text()))
    settings = Settings.load()
    streams = Streams(connect(settings), settings)
    events = streams.job(args.job_id, "events")
    await streams.publish(events, JobEvent(job_id=args.job_id, event="state", state=JobState.RUNNING))
    exit_code = int(os.environ.get("FAKE_LEARNER_EXIT", "0"))
    if exit_code:
        return exit_code
    for step in range(1, spec.schedule.total_steps + 1):
        await asyncio.sleep(float(os.environ.get("FAKE_LEARNER_STEP_S", "0.1")))
        data = {"reward_mean": step / 10, "kl": 0.001 * step}
        await streams.publish(events, JobEvent(job_id=args.job_id, event="metrics", step=step, data=data))
    checkpoint = os.path.join(args.output_dir, "checkpoint-final")
    await streams.publish(
        events,
        JobEvent(job_id=args.job_id, event="checkpoint", step=spec.schedule.total_steps, data={"path": checkpoint}),
    )
    await streams.publish(events, JobEvent(job_id=args.job_id, event="state", state=JobState.SUCCEEDED))
    await streams.redis.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
