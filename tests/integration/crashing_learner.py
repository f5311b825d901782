"""A learner entrypoint that dies by SIGKILL mid-job, as a learner killed or out of memory does, and resumes.

Each step it appends its number to `<output-dir>/trained.txt` and then saves `<output-dir>/checkpoint.json` (the
next step); a relaunch starts from that checkpoint. While `<output-dir>/launches.txt` has fewer than
CRASH_LAUNCHES lines it SIGKILLs itself after CRASH_AFTER_STEP steps of that launch, reporting nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
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
    out = Path(args.output_dir)
    with (out / "launches.txt").open("a") as launches:
        launches.write(f"{os.getpid()}\n")
    crash = len((out / "launches.txt").read_text().splitlines()) <= int(os.environ.get("CRASH_LAUNCHES", "0"))
    checkpoint = out / "checkpoint.json"
    step = json.loads(checkpoint.read_text())["step"] if checkpoint.exists() else 0
    settings = Settings.load()
    streams = Streams(connect(settings), settings)
    events = streams.job(args.job_id, "events")
    await streams.publish(events, JobEvent(job_id=args.job_id, event="state", state=JobState.RUNNING))
    done_here = 0
    while step < spec.schedule.total_steps:
        if crash and done_here == int(os.environ.get("CRASH_AFTER_STEP", "1")):
            os.kill(os.getpid(), signal.SIGKILL)
        step += 1
        with (out / "trained.txt").open("a") as trained:
            trained.write(f"{step}\n")
        checkpoint.write_text(json.dumps({"step": step}))
        await streams.publish(events, JobEvent(job_id=args.job_id, event="metrics", step=step, data={"s": step}))
        done_here += 1
    await streams.publish(events, JobEvent(job_id=args.job_id, event="state", state=JobState.SUCCEEDED))
    await streams.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
