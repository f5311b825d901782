"""A stand-in learner entrypoint for control-plane tests: reports through the job's events stream like the real
learner does (RUNNING, a metrics event per step, a checkpoint, then SUCCEEDED), without training anything.
An evaluation job reads its eval sets and reports progress, then EM = 1 / (questions read) per data set.

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
from trainer.data import group_by_dataset, load_sources


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
    if spec.kind == "eval":
        groups = group_by_dataset(load_sources(spec.data.eval))
        total = sum(len(examples) for examples in groups.values())
        for done in (0, total):
            progress = {"phase": "eval", "done": done, "total": total}
            await streams.publish(events, JobEvent(job_id=args.job_id, event="progress", step=0, data=progress))
        results = {f"eval_em/{name}": 1 / len(examples) for name, examples in groups.items()}
        await streams.publish(events, JobEvent(job_id=args.job_id, event="eval", step=0, data=results))
        await streams.publish(events, JobEvent(job_id=args.job_id, event="state", state=JobState.SUCCEEDED))
        await streams.redis.aclose()
        return 0
    for step in range(1, spec.schedule.total_steps + 1):
        await asyncio.sleep(float(os.environ.get("FAKE_LEARNER_STEP_S", "0.1")))
        data = {"reward_mean": step / 10, "kl": 0.001 * step}
        await streams.publish(events, JobEvent(job_id=args.job_id, event="metrics", step=step, data=data))
    checkpoint = os.path.join(args.output_dir, "checkpoint-final")
    saved = {"path": checkpoint, "policy": os.path.join(checkpoint, "policy")}
    os.makedirs(saved["policy"], exist_ok=True)  # the folder an evaluation of the checkpoint names as its model
    last = spec.schedule.total_steps
    await streams.publish(events, JobEvent(job_id=args.job_id, event="checkpoint", step=last, data=saved))
    await streams.publish(events, JobEvent(job_id=args.job_id, event="state", state=JobState.SUCCEEDED))
    await streams.redis.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
