"""Telemetry helpers: JSON log lines keep extra fields; metrics are created once per name."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from services.telemetry import JsonFormatter, counter, gauge


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
