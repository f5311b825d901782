"""Shared fixtures: every test gets a real Redis and a key prefix of its own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from searchr1.redis_server import DEFAULT_URL, PrivateRedis, answers
from services.config import Settings


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """SEARCHR1_REDIS_URL if set, else the machine's Redis on 6379 if it answers, else a private server."""
    configured = os.environ.get("SEARCHR1_REDIS_URL")
    if configured:
        if not answers(configured):
            pytest.fail(f"SEARCHR1_REDIS_URL={configured} does not answer PING")
        yield configured
    elif answers(DEFAULT_URL):
        yield DEFAULT_URL
    else:
        with PrivateRedis() as server:
            yield server.url


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A unique namespace; every key under it is deleted after the test."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def settings(redis_url: str, key_prefix: str) -> Settings:
    """Kernel settings for tests: fast reclaim, few deliveries before dead-lettering."""
    return Settings(redis_url=redis_url, key_prefix=key_prefix, reclaim_idle_ms=300, max_deliveries=3)


@pytest.fixture
def worker_env(settings: Settings) -> dict[str, str]:
    """Environment for a worker subprocess that shares the test's Redis and prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEARCHR1_")}
    env.update(
        SEARCHR1_REDIS_URL=settings.redis_url,
        SEARCHR1_KEY_PREFIX=settings.key_prefix,
        SEARCHR1_RECLAIM_IDLE_MS=str(settings.reclaim_idle_ms),
        SEARCHR1_MAX_DELIVERIES=str(settings.max_deliveries),
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    return env
