"""Logging and Prometheus helpers. Metric names are API (dashboards and alerts use them): see DESIGN.md."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

_LOG_RECORD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields of the call kept as keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _LOG_RECORD_FIELDS})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in ("httpx", "httpcore"):  # one INFO line per HTTP request drowns everything else
        logging.getLogger(chatty).setLevel(logging.WARNING)


def serve_metrics(host: str, port: int | None, owner: str) -> bool:
    """This process's `/metrics` on `port` (any path answers), from a thread: what a PodMonitor scrapes in
    processes that have no HTTP server of their own. None serves nothing; a port already taken (two such
    processes on one machine or pod) costs the metrics, not the work. True when served."""
    if port is None:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        logging.getLogger(__name__).warning("%s metrics not served on %s:%d: %s", owner, host, port, exc)
        return False
    return True


def _get_or_create(kind: type[M], name: str, documentation: str, labels: Sequence[str], **kwargs: object) -> M:
    """Metrics are process-global; asking twice for the same name returns the first one instead of failing."""
    existing = REGISTRY._names_to_collectors.get(name)
    if existing is not None:
        if not isinstance(existing, kind):
            raise TypeError(f"metric {name} already exists as {type(existing).__name__}, not {kind.__name__}")
        return existing
    return kind(name, documentation, labelnames=tuple(labels), **kwargs)


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    return _get_or_create(Counter, name, documentation, labels)


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    return _get_or_create(Gauge, name, documentation, labels)


def histogram(
    name: str, documentation: str, labels: Sequence[str] = (), buckets: Sequence[float] | None = None
) -> Histogram:
    kwargs = {"buckets": tuple(buckets)} if buckets is not None else {}
    return _get_or_create(Histogram, name, documentation, labels, **kwargs)


# Metrics of the kernel itself (streams and workers).
STREAM_LAG = gauge("searchr1_stream_lag", "Entries not yet delivered to the group", ["stream", "group"])
STREAM_PENDING = gauge("searchr1_stream_pending", "Entries delivered but not acknowledged", ["stream", "group"])
STREAM_LENGTH = gauge("searchr1_stream_length", "Entries held in the stream", ["stream"])
STREAM_DEAD_LETTERS = counter(
    "searchr1_stream_dead_letters_total", "Entries moved to the dead-letter stream", ["stream", "group", "reason"]
)
DEAD_LETTER_REASONS = ("undecodable", "failed", "max_deliveries")  # the reasons `Streams` records
STREAM_PUBLISHED = counter("searchr1_stream_published_total", "Messages published", ["stream"])
WORKER_PROCESSED = counter(
    "searchr1_worker_messages_total", "Messages a worker finished", ["stream", "group", "outcome"]
)
WORKER_RECLAIMED = counter(
    "searchr1_worker_reclaimed_total", "Entries taken over from idle consumers", ["stream", "group"]
)
WORKER_IN_FLIGHT = gauge("searchr1_worker_in_flight", "Messages being handled right now", ["stream", "group"])
WORKER_HANDLE_SECONDS = histogram(
    "searchr1_worker_handle_seconds",
    "Time to handle one batch of messages",
    ["stream", "group"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
)


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds` — elapsed wall time, for phase timings."""

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
