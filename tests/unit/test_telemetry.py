"""Telemetry helpers: JSON log lines keep extra fields; metrics are created once per name and served on a port."""

from __future__ import annotations

import json
import logging
import sys

import httpx
import pytest

from searchr1.redis_server import free_port
from services.telemetry import JsonFormatter, counter, gauge, serve_metrics


def test_json_formatter_keeps_extra_fields_and_exceptions() -> None:
    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": "scored %d", "args": (3,), "job": "j1"})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "scored 3" and entry["job"] == "j1" and entry["level"] == "INFO"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.makeLogRecord({"msg": "failed", "exc_info": sys.exc_info()})
    assert "RuntimeError: boom" in json.loads(JsonFormatter().format(failed))["exc"]


def test_metrics_are_get_or_create_and_kind_checked() -> None:
    first = counter("searchr1_test_things_total", "things", ["job"])
    assert counter("searchr1_test_things_total", "things", ["job"]) is first
    with pytest.raises(TypeError, match="already exists as Counter"):
        gauge("searchr1_test_things_total", "things", ["job"])


def test_serve_metrics_serves_this_registry_and_survives_a_taken_port(caplog: pytest.LogCaptureFixture) -> None:
    gauge("searchr1_test_served", "a served gauge").set(7)
    port = free_port()
    assert serve_metrics("127.0.0.1", port, "test") is True
    for path in ("/metrics", "/metrics/"):  # the chart's monitors scrape /metrics/
        assert "searchr1_test_served 7.0" in httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).text
    with caplog.at_level(logging.WARNING):
        assert serve_metrics("127.0.0.1", port, "second") is False
    assert f"second metrics not served on 127.0.0.1:{port}" in caplog.text
    assert serve_metrics("127.0.0.1", None, "off") is False
