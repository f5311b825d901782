"""What an engine is doing, for the Rollout dashboard: requests inside it and the share of its KV cache in use.

vLLM reports both from its scheduler through a stat logger (`vllm_stat_logger`). Its reports come with engine
steps, so an idle engine would keep showing its last busy step: the engine sets the gauges to zero itself when
its last request leaves, and a step report that arrives after that (vLLM's output handler can yield, e.g. to abort
a request that hit a stop string, between handing out a final output and recording the step) is read as idle
too. The HF engine reports its own queue (one request runs, the rest wait) and, having no
paged KV cache, no KV-cache ratio at all rather than a made-up one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

from services.telemetry import gauge

ENGINE_REQUESTS = gauge("searchr1_rollout_engine_requests", "Requests inside the engine", ["state"])


def kv_cache_usage() -> Gauge:
    """Created by the vLLM path only, so that an HF engine exports no KV-cache ratio (not even a zero)."""
    return gauge("searchr1_rollout_kv_cache_usage_ratio", "Share of the engine's KV cache in use (0..1)")


def record_requests(running: int, waiting: int) -> None:
    ENGINE_REQUESTS.labels("running").set(running)
    ENGINE_REQUESTS.labels("waiting").set(waiting)


def record_idle_vllm() -> None:
    """An engine with no request in flight holds no KV-cache block and runs nothing."""
    record_requests(0, 0)
    kv_cache_usage().set(0.0)


def vllm_stat_logger(busy: Callable[[], bool]) -> type:
    """A vLLM stat logger class (pass it in `stat_loggers`) that copies the scheduler's figures into our gauges
    while `busy()` (the engine has requests in flight). Built on demand so that importing this module does not
    import vLLM."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerGauges(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
        ) -> None:
            if scheduler_stats is None:
                return
            if not busy():
                record_idle_vllm()
                return
            waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
            record_requests(scheduler_stats.num_running_reqs, waiting)
            kv_cache_usage().set(scheduler_stats.kv_cache_usage)

        def log_engine_initialized(self) -> None:
            pass

    return SchedulerGauges
