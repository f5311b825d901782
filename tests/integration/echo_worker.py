"""A stream worker for kernel tests: echoes each JobEvent from `<prefix>:in` to `<prefix>:out`.

Environment: ECHO_SLEEP_S (seconds per message), ECHO_CONCURRENCY, ECHO_CONSUMER, and the SEARCHR1_* settings.
A message whose text is "poison" always fails. The output records which consumer handled which message id.
"""

from __future__ import annotations

import asyncio
import os

from services.config import Settings
from services.contracts import JobEvent
from services.streams import Output, Streams, connect
from services.telemetry import configure_logging
from services.worker import StreamWorker, run_worker


async def main() -> None:
    settings = Settings.load()
    configure_logging(settings.log_level)
    streams = Streams(connect(settings), settings)
    sleep_s = float(os.environ.get("ECHO_SLEEP_S", "0"))
    consumer = os.environ.get("ECHO_CONSUMER", f"echo-{os.getpid()}")
    out_stream = f"{settings.key_prefix}:out"

    async def handle(event: JobEvent) -> list[Output]:
        if event.message == "poison":
            raise ValueError("poison message refused")
        await asyncio.sleep(sleep_s)
        echo = JobEvent(job_id=event.job_id, event="log", message=event.msg_id, data={"consumer": consumer})
        return [Output(out_stream, echo)]

    worker = StreamWorker(
        streams,
        stream=f"{settings.key_prefix}:in",
        group="echo",
        message_type=JobEvent,
        handle=handle,
        consumer=consumer,
        concurrency=int(os.environ.get("ECHO_CONCURRENCY", "16")),
    )
    print("ready", flush=True)
    await run_worker(worker, settings)
    await streams.redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
